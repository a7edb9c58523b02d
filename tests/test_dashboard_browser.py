"""The usage dashboard in a real browser: Chromium (Playwright) → daphne (child process), as staff.

The charts are inline SVG drawn on the server: they must show, with a size, in the admin's light
and dark themes, and their text must follow the theme. The README's picture is taken here.
"""

from __future__ import annotations

import os
import random
from datetime import datetime, time, timedelta
from decimal import Decimal
from urllib.parse import urlsplit

import pytest
from django.contrib.staticfiles import finders
from django.utils import timezone

from streaming.api_keys import create_api_key
from streaming.models import LimitRefusal, UsageLog
from tests.live_site import BASE_DIR
from tests.test_browser import screenshot_dir

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    Page = expect = None

STAFF_PASSWORD = "pw-root-for-the-dashboard"
MODELS = ("gpt-4o-mini", "gpt-4.1", "o4-mini")


@pytest.fixture
def usage(transactional_db, django_user_model):
    """A superuser, and three weeks of requests by a few users, some with keys, on three models."""
    django_user_model.objects.create_superuser("root", password=STAFF_PASSWORD)
    users = [django_user_model.objects.create_user(name) for name in ("alice", "bob", "carol", "dave")]
    keys = [create_api_key(user=users[0], name="laptop")[0], create_api_key(user=users[2], name="ci")[0]]
    random.seed(13)
    today = timezone.localdate()
    rows = []
    for days_ago in range(21):
        day = today - timedelta(days=days_ago)
        for n in range(random.randint(8, 30)):
            user = random.randrange(len(users))
            model = MODELS[(n + user) % len(MODELS)]
            tokens = random.randint(100, 6000) * (3 if model == "gpt-4.1" else 1)
            rows.append(
                UsageLog(
                    user=users[user],
                    api_key=keys[user // 2] if user in (0, 2) and n % 3 else None,
                    created_at=timezone.make_aware(datetime.combine(day, time(random.randrange(24)))),
                    model=model,
                    status=random.choice(["completed"] * 8 + ["error", "cancelled"]),
                    prompt_tokens=tokens // 2,
                    completion_tokens=tokens - tokens // 2,
                    total_tokens=tokens,
                    cost=Decimal(tokens) * Decimal("0.000004" if model == "gpt-4.1" else "0.0000006"),
                    time_to_first_token_ms=random.randint(150, 900) * (2 if model == "o4-mini" else 1),
                    duration_ms=random.randint(500, 9000),
                )
            )
        if days_ago % 4 == 1:
            LimitRefusal.objects.create(user=users[1], day=day, limit="requests_per_minute", count=random.randint(1, 6))
    UsageLog.objects.bulk_create(rows)
    return rows


@pytest.fixture
def dashboard(live_site, usage, browser) -> Page:
    # `usage` before `browser`: the rows are written while the ORM may still be used in this thread.
    context = browser.new_context(base_url=live_site.url, viewport={"width": 1100, "height": 900})
    context.set_default_timeout(10_000)
    # The live site runs with DEBUG off and no web server in front, so nothing serves /static/;
    # the admin's CSS (and its light and dark themes) come from the apps' static folders here.
    context.route(f"{live_site.url}/static/**", serve_static)
    page = context.new_page()
    page.goto("/admin/login/?next=/admin/")
    page.get_by_label("Username").fill("root")
    page.get_by_label("Password").fill(STAFF_PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Usage dashboard").click()
    expect(page.get_by_role("heading", name="Usage dashboard")).to_be_visible()
    yield page
    context.close()


def serve_static(route) -> None:
    found = finders.find(urlsplit(route.request.url).path.removeprefix("/static/"))
    if found:
        route.fulfill(path=found)
    else:
        route.fulfill(status=404)


def chart_text_colour(page: Page) -> str:
    return page.locator("#chart-cost svg .axis text").first.evaluate("element => getComputedStyle(element).fill")


def test_the_charts_show_in_the_light_and_dark_themes(dashboard: Page):
    page = dashboard
    colours = {}
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        charts = page.locator("figure svg.pygal-chart")
        expect(charts).to_have_count(6)
        for index in range(6):
            chart = charts.nth(index)
            chart.scroll_into_view_if_needed()
            expect(chart).to_be_visible()
            box = chart.bounding_box()
            assert box and box["width"] > 300 and box["height"] > 100, box
        drawn = page.locator("#chart-cost svg .series rect.rect").evaluate_all(
            "bars => bars.filter(bar => bar.getBoundingClientRect().height > 0).length"
        )
        assert drawn > 20, "the cost chart drew too few bars"
        colours[scheme] = chart_text_colour(page)
        page.locator("#usage-dashboard").scroll_into_view_if_needed()
        page.screenshot(path=screenshot_dir() / f"usage-dashboard-{scheme}.png", full_page=True)
    # The labels take the admin's text colour: dark on the light theme, light on the dark one.
    assert colours["light"] != colours["dark"], colours
    assert _brightness(colours["light"]) < 100 < _brightness(colours["dark"]), colours

    page.emulate_media(color_scheme="light")
    page.evaluate("window.scrollTo(0, 0)")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # the README's picture: UPDATE_DOCS_SCREENSHOT=1 pytest -k dashboard
        bottom = page.locator("#chart-tokens").bounding_box()
        page.screenshot(
            path=BASE_DIR / "docs" / "usage-dashboard.png",
            full_page=True,
            clip={"x": 0, "y": 0, "width": 1100, "height": bottom["y"] + bottom["height"] + 10},
        )


def test_a_filter_narrows_the_charts_in_the_browser(dashboard: Page):
    page = dashboard
    page.get_by_label("Model", exact=True).fill("o4-mini")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#table-cost thead th")).to_have_text(["Day", "o4-mini", "Total"])
    expect(page.locator("#table-first-token tbody th")).to_have_text(["o4-mini"])
    legend = page.locator("#chart-cost svg .legends text")
    expect(legend).to_have_text(["o4-mini"])


def _brightness(colour: str) -> float:
    red, green, blue = (float(part) for part in colour[colour.index("(") + 1 : colour.index(")")].split(",")[:3])
    return (red * 299 + green * 587 + blue * 114) / 1000

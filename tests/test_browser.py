"""The chat page in a real browser: Chromium (Playwright) → daphne (child process) → fake upstream.

Every test drives the page as a person would and checks what that person sees. While Playwright
runs, the ORM cannot be used in this thread (see the `browser` fixture): rows are read in a worker
thread.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest
from django.contrib.staticfiles import finders
from django.db import connections

from streaming.api_keys import KEY_PATTERN
from streaming.models import UsageLog
from tests.fake_upstream import FakeUpstream, Reply
from tests.live_site import BASE_DIR, MODEL, OTHER_MODEL, PASSWORD, v1_url

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    Page = expect = None

# Slow enough that a streamed answer is seen growing, quick enough to keep the tests short.
PACE = 0.15
ANSWER_PIECES = [
    "Streaming shows",
    " each token",
    " as the model",
    " writes it,",
    " so you start",
    " reading at once",
    " instead of waiting",
    " for the whole answer.",
]
QUESTION = "Why stream chat answers?"


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("SCREENSHOT_DIR") or BASE_DIR / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def in_another_thread(function, *args):
    """Run `function` in a worker thread with its own database connection (Playwright owns this one)."""

    def run():
        try:
            return function(*args)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run).result(timeout=15)


def wait_for_usage_rows(user, count: int, timeout: float = 5.0) -> list[UsageLog]:
    """The user's usage rows, oldest first, once `count` exist (or whatever exists after `timeout`)."""

    def poll():
        deadline = time.monotonic() + timeout
        while True:
            rows = list(UsageLog.objects.filter(user=user).order_by("created_at"))
            if len(rows) >= count or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    return in_another_thread(poll)


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def serve_static(route) -> None:
    """/static/ as `collectstatic` and a web server (or runserver) would serve it: from the apps' static folders.

    The live site runs with DEBUG off and no web server in front, so nothing there serves /static/.
    """
    found = finders.find(urlsplit(route.request.url).path.removeprefix("/static/"))
    if found:
        route.fulfill(path=found)
    else:
        route.fulfill(status=404)


def new_context(browser, live_site, **options):
    """A browser context on the live site, its static files (the chat page's script and styles) served."""
    context = browser.new_context(base_url=live_site.url, **{"viewport": {"width": 800, "height": 520}, **options})
    context.set_default_timeout(10_000)
    context.route(f"{live_site.url}/static/**", serve_static)
    return context


@pytest.fixture
def context(live_site, user, browser):
    # `user` before `browser`: the user is created while the ORM may still be used in this thread.
    context = new_context(browser, live_site)
    yield context
    context.close()


def log_in(page: Page, username: str = "alice") -> None:
    page.goto("/accounts/login/?next=/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text(f"Signed in as {username}")).to_be_visible()


@pytest.fixture
def chat(context) -> Page:
    """The chat page, logged in as alice through the login form."""
    page = context.new_page()
    log_in(page)
    expect(page.get_by_label("Message")).to_be_visible()
    return page


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


def answer(page: Page, index: int = -1):
    answers = page.locator(".message.assistant")
    return answers.last if index == -1 else answers.nth(index)


def test_logging_in_through_the_form_opens_the_chat(context, live_site):
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(f"{live_site.url}/accounts/login/?next=/")

    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("didn't match")

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Signed in as alice")).to_be_visible()
    assert page.url.endswith("/") and "/accounts/" not in page.url
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()


def test_the_answer_grows_as_it_streams_then_shows_its_usage(chat, fake_upstream: FakeUpstream):
    reply = Reply(pieces=ANSWER_PIECES, delay=PACE, usage=(23, 8))
    fake_upstream.will_reply(reply)
    shots = screenshot_dir()

    send(chat, QUESTION)
    text = answer(chat).locator(".text")
    usage = answer(chat).locator(".usage")
    seen: list[str] = []
    deadline = time.monotonic() + 10 + len(ANSWER_PIECES) * PACE
    while time.monotonic() < deadline:
        current = text.text_content()
        if not seen or current != seen[-1]:
            seen.append(current)
            if len(seen) == 3:
                chat.screenshot(path=shots / "chat-mid-stream.png")
        if usage.count():
            break
        chat.wait_for_timeout(30)
    final = text.text_content()

    partials = [piece for piece in seen if piece and piece != final]
    assert len(partials) >= 2, f"the answer did not grow piece by piece; the page showed {seen!r}"
    assert all(final.startswith(partial) for partial in partials), seen
    assert [len(partial) for partial in partials] == sorted({len(partial) for partial in partials})
    assert final == reply.text

    expect(usage).to_have_text("31 tokens (prompt 23, answer 8)")
    expect(chat.get_by_role("button", name="Send")).to_be_enabled()
    expect(chat.get_by_role("button", name="Stop")).to_be_disabled()
    chat.screenshot(path=shots / "chat-answer-complete.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # the README's picture: UPDATE_DOCS_SCREENSHOT=1 pytest -k grows
        composer = chat.locator("#composer").bounding_box()
        height = composer["y"] + composer["height"] + 20
        chat.screenshot(path=BASE_DIR / "docs" / "chat-page.png", clip={"x": 0, "y": 0, "width": 800, "height": height})


def test_stop_ends_the_answer_and_the_page_stays_usable(chat, fake_upstream: FakeUpstream, user):
    long_reply = Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1)
    fake_upstream.will_reply(long_reply, Reply(pieces=["Still", " here."]))

    send(chat, "Count to a hundred, slowly.")
    text = answer(chat).locator(".text")
    expect(text).to_contain_text("word2 ")
    chat.screenshot(path=screenshot_dir() / "chat-before-stop.png")
    chat.get_by_role("button", name="Stop").click()

    expect(answer(chat).get_by_text("Stopped.")).to_be_visible()
    stopped_text = text.text_content()
    chat.wait_for_timeout(600)  # six more pieces' time
    assert text.text_content() == stopped_text, "the answer kept growing after Stop"
    # The answer is shown as Markdown, which drops a paragraph's trailing space.
    assert stopped_text.startswith("word0 word1 word2") and "word99" not in stopped_text
    chat.screenshot(path=screenshot_dir() / "chat-after-stop.png")

    record = fake_upstream.streams[0]
    assert wait_until(lambda: record.client_closed_at is not None), "the upstream connection stayed open"
    assert record.events_sent < 50
    rows = wait_for_usage_rows(user, 1)
    assert [row.status for row in rows] == ["cancelled"]

    expect(chat.get_by_role("button", name="Send")).to_be_enabled()
    send(chat, "Are you still there?")
    expect(answer(chat).locator(".text")).to_have_text("Still here.")
    expect(answer(chat).locator(".usage")).to_be_visible()


def test_an_upstream_failure_mid_answer_is_shown_as_an_error(chat, fake_upstream: FakeUpstream):
    fake_upstream.will_reply(Reply(pieces=["one", " two", " three"], error_after=2, delay=0.05))

    send(chat, "Count to three.")

    alert = answer(chat).get_by_role("alert")
    expect(alert).to_contain_text("The model crashed mid-answer.")
    expect(answer(chat).locator(".text")).to_have_text("one two")
    # The question is put back so it can be sent again.
    expect(chat.get_by_label("Message")).to_have_value("Count to three.")
    expect(chat.get_by_role("button", name="Send")).to_be_enabled()
    chat.screenshot(path=screenshot_dir() / "chat-upstream-error.png")


def test_markup_in_the_answer_is_shown_as_text_and_never_runs(chat, fake_upstream: FakeUpstream):
    pieces = ["Here: ", "<scr", "ipt>window.__xss=1</script>", " and ", '<img src=x onerror="window.__xss=2">']
    fake_upstream.will_reply(Reply(pieces=pieces))

    send(chat, "<b>Show me</b> some HTML")

    expect(answer(chat).locator(".usage")).to_be_visible()
    expect(answer(chat).locator(".text")).to_have_text("".join(pieces))
    expect(chat.locator(".message.user").last).to_have_text("<b>Show me</b> some HTML")
    assert chat.locator("#conversation script, #conversation img, #conversation b").count() == 0
    chat.wait_for_timeout(200)  # time for a broken image's onerror, had an <img> been created
    assert chat.evaluate("typeof window.__xss") == "undefined"


def test_after_logging_out_in_another_tab_sending_asks_to_log_in(chat, context, fake_upstream: FakeUpstream):
    other_tab = context.new_page()
    other_tab.goto("/")
    other_tab.get_by_role("button", name="Log out").click()
    expect(other_tab.get_by_role("heading", name="Log in")).to_be_visible()

    send(chat, "Hello?")

    alert = answer(chat).get_by_role("alert")
    expect(alert).to_contain_text("You are not logged in")
    expect(alert.get_by_role("link", name="Log in")).to_have_attribute("href", "/accounts/login/")
    expect(chat.get_by_label("Message")).to_have_value("Hello?")
    expect(chat.get_by_role("button", name="Send")).to_be_enabled()
    assert fake_upstream.requests == []


def test_a_follow_up_question_sends_the_conversation_so_far(chat, fake_upstream: FakeUpstream):
    fake_upstream.will_reply(Reply(pieces=["Paris", "."]), Reply(pieces=["About", " two", " million."]))

    send(chat, "What is the capital of France?")
    expect(answer(chat, 0).locator(".usage")).to_be_visible()
    send(chat, "How many people live there?")
    expect(answer(chat, 1).locator(".usage")).to_be_visible()
    expect(answer(chat, 1).locator(".text")).to_have_text("About two million.")

    assert len(fake_upstream.requests) == 2
    assert fake_upstream.requests[-1].json()["messages"][-3:] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "How many people live there?"},
    ]


def test_a_new_key_is_shown_once_copied_used_by_the_sdk_and_revoked(context, live_site):
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_site.url)
    page = context.new_page()
    log_in(page)
    page.get_by_role("link", name="API keys").click()
    page.get_by_label("Name").fill("my laptop")
    page.get_by_label("Expires").select_option("30")
    page.get_by_role("button", name="Create key").click()
    shown = page.get_by_label("New API key").input_value()
    assert KEY_PATTERN.fullmatch(shown)
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_text("Copied to the clipboard.")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == shown
    page.screenshot(path=screenshot_dir() / "api-key-created.png")
    if os.environ.get("UPDATE_DOCS_SCREENSHOT"):
        page.screenshot(path=BASE_DIR / "docs" / "api-keys-page.png", full_page=True)

    client = openai.OpenAI(base_url=v1_url(live_site), api_key=shown, max_retries=0)
    assert [model.id for model in client.models.list()] == [MODEL, OTHER_MODEL]

    page.reload()  # a GET of the list, not the form posted again: still one key, shown by its public id only
    expect(page.get_by_role("cell", name="my laptop")).to_have_count(1)
    assert shown not in page.content()
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("cell", name="active", exact=True)).to_be_visible()
    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Revoke").click()
    expect(page.get_by_role("cell", name="revoked", exact=True)).to_be_visible()
    with pytest.raises(openai.AuthenticationError):
        client.models.list()

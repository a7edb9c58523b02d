from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache

from streaming.api_keys import create_api_key
from streaming.models import ModelPrice
from streaming.price_seeds import seed_prices
from tests.fake_upstream import FakeUpstream
from tests.live_site import (
    CHROMIUM,
    CHROMIUM_ARGS,
    LIVE_SITE_DB_APPLICATION,
    MODEL,
    OTHER_MODEL,
    PASSWORD,
    TEST_API_KEY,
    LiveSite,
    free_port,
    live_site_environment,
    logged_in_client,
    skip_or_fail,
)


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    server = FakeUpstream(TEST_API_KEY).start()
    yield server
    server.stop()


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    """The fake OpenAI-compatible upstream, with no scripted replies and no recorded requests."""
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture(autouse=True)
def empty_cache() -> None:
    """Limits counted in one test must not leak into the next (on Redis the counters outlive a process)."""
    cache.clear()


@pytest.fixture(autouse=True)
def upstream_settings(settings, fake_upstream: FakeUpstream) -> None:
    """In-process code talks to the fake upstream, never to a real one (whatever `.env` says)."""
    settings.OPENAI_API_KEY = TEST_API_KEY
    settings.OPENAI_BASE_URL = fake_upstream.base_url
    settings.OPENAI_MAX_RETRIES = 0
    settings.OPENAI_FIRST_TOKEN_TIMEOUT = 2.0
    settings.OPENAI_IDLE_TIMEOUT = 2.0
    settings.CHAT_DEMO_MODE = False
    settings.CHAT_DEFAULT_MODEL = MODEL
    settings.CHAT_ALLOWED_MODELS = [MODEL, OTHER_MODEL]


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix, tmp_path_factory) -> None:
    """SQLite tests use a file, so a server in another process shares the test database."""
    database = django_settings.DATABASES["default"]
    if database["ENGINE"].endswith("sqlite3"):
        database.setdefault("TEST", {})["NAME"] = str(tmp_path_factory.mktemp("db") / "test.sqlite3")


@pytest.fixture(scope="session")
def live_site(django_db_setup, fake_upstream_server, tmp_path_factory) -> Iterator[LiveSite]:
    site = LiveSite(
        tmp_path_factory.mktemp("live-site") / "daphne.log",
        live_site_environment(
            LIVE_SITE_DB_APPLICATION,
            OPENAI_API_KEY=TEST_API_KEY,
            OPENAI_BASE_URL=fake_upstream_server.base_url,
            CHAT_DEFAULT_MODEL=MODEL,
            CHAT_ALLOWED_MODELS=f"{MODEL},{OTHER_MODEL}",
        ),
    )
    yield site
    site.stop()
    assert TEST_API_KEY not in site.log(), "the API key appeared in the server's log"


@pytest.fixture(scope="session")
def cors_origin() -> str:
    """A browser origin (a port on localhost) that `cors_site` lets call its /v1."""
    return f"http://localhost:{free_port()}"


@pytest.fixture(scope="session")
def cors_site(django_db_setup, fake_upstream_server, tmp_path_factory, cors_origin) -> Iterator[LiveSite]:
    """The site with CHAT_API_CORS_ORIGINS listing `cors_origin`."""
    site = LiveSite(
        tmp_path_factory.mktemp("cors-site") / "daphne.log",
        live_site_environment(
            "chatproxy-cors-site",
            OPENAI_API_KEY=TEST_API_KEY,
            OPENAI_BASE_URL=fake_upstream_server.base_url,
            CHAT_DEFAULT_MODEL=MODEL,
            CHAT_ALLOWED_MODELS=MODEL,
            CHAT_API_CORS_ORIGINS=cors_origin,
        ),
    )
    yield site
    site.stop()


@pytest.fixture(scope="session")
def demo_site(django_db_setup, tmp_path_factory) -> Iterator[LiveSite]:
    """The site with no API key: the built-in demo model answers."""
    site = LiveSite(
        tmp_path_factory.mktemp("demo-site") / "daphne.log",
        live_site_environment("chatproxy-demo-site", OPENAI_API_KEY="", CHAT_DEMO_TOKEN_DELAY="0.01"),
    )
    yield site
    site.stop()


@pytest.fixture
def alice(db, django_user_model):
    """A user for tests that need no live server (`user` is the live site's)."""
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def bob(db, django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def user(transactional_db, django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


@pytest.fixture
def api_key(user) -> str:
    """A personal API key of `user`, as `create_api_key` shows it once."""
    return create_api_key(user=user, name="test key")[1]


@pytest.fixture
def site_client(live_site: LiveSite, user) -> Iterator[httpx.Client]:
    client = logged_in_client(live_site, user)
    yield client
    client.close()


@pytest.fixture
def demo_client(demo_site: LiveSite, user) -> Iterator[httpx.Client]:
    client = logged_in_client(demo_site, user)
    yield client
    client.close()


@pytest.fixture
def browser():
    """Debian's headless Chromium driven by sync Playwright, started afresh for each test (about 1 s).

    While Playwright runs it marks its event loop as running in this thread, so here Django's ORM
    raises SynchronousOnlyOperation and pytest-asyncio cannot run a loop. That is why this fixture is
    not session-scoped: it would break every later test. Request it after the fixtures that use the
    ORM (such as `user`), and read the database from another thread inside the test.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        skip_or_fail("playwright is not installed: pip install -r requirements-dev.txt")
    if not CHROMIUM.exists():
        skip_or_fail(f"no Chromium at {CHROMIUM}: apt-get install chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def seeded_prices(transactional_db) -> None:
    """The starting prices migration 0007 seeds (a transactional test's flush empties the table)."""
    if not ModelPrice.objects.exists():
        seed_prices(ModelPrice)

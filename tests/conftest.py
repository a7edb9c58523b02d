from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from django.conf import settings as django_settings
from django.core.cache import cache
from django.test import Client

from tests.fake_upstream import FakeUpstream

BASE_DIR = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk-test-Zq8vP3xL0wR7nK2mT5yB9cJ4hD6fG1sA"
MODEL = "gpt-test"
OTHER_MODEL = "gpt-test-large"
PASSWORD = "correct horse battery staple"
# The live site's limits, set through its environment.
LIVE_KEEPALIVE_SECONDS = 0.5
LIVE_REQUESTS_PER_MINUTE = 30
LIVE_CONCURRENT_STREAMS = 3
LIVE_DATABASE_POOL_MAX_SIZE = 4
LIVE_SITE_DB_APPLICATION = "chatproxy-live-site"


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


def _database_url(application_name: str) -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    credentials = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    # The name lets a test count the connections the site's processes hold.
    return (
        f"postgres://{credentials}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"
        f"?application_name={application_name}"
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveSite:
    """The site under daphne in a child process, configured only through its environment."""

    def __init__(self, log_path: Path, environment: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # The same SECRET_KEY as this process, so sessions made here are valid there.
        env = {**os.environ, "DEBUG": "false", "SECRET_KEY": django_settings.SECRET_KEY, **environment}
        command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), "chatproxy.asgi:application"]
        self._log = log_path.open("w")
        self.process = subprocess.Popen(command, cwd=BASE_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"daphne exited early:\n{self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"daphne did not start listening:\n{self.log_path.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def _live_site_environment(application_name: str, **extra: str) -> dict[str, str]:
    """The environment of a site in a child process; `application_name` tags its database connections."""
    return {
        "DATABASE_URL": _database_url(application_name),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "OPENAI_MAX_RETRIES": "0",
        "OPENAI_FIRST_TOKEN_TIMEOUT": "2",
        "OPENAI_IDLE_TIMEOUT": "2",
        "CHAT_KEEPALIVE_SECONDS": str(LIVE_KEEPALIVE_SECONDS),
        "CHAT_REQUESTS_PER_MINUTE": str(LIVE_REQUESTS_PER_MINUTE),
        "CHAT_CONCURRENT_STREAMS": str(LIVE_CONCURRENT_STREAMS),
        "DATABASE_POOL_MAX_SIZE": str(LIVE_DATABASE_POOL_MAX_SIZE),
        **extra,
    }


@pytest.fixture(scope="session")
def live_site(django_db_setup, fake_upstream_server, tmp_path_factory) -> Iterator[LiveSite]:
    site = LiveSite(
        tmp_path_factory.mktemp("live-site") / "daphne.log",
        _live_site_environment(
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
def demo_site(django_db_setup, tmp_path_factory) -> Iterator[LiveSite]:
    """The site with no API key: the built-in demo model answers."""
    site = LiveSite(
        tmp_path_factory.mktemp("demo-site") / "daphne.log",
        _live_site_environment("chatproxy-demo-site", OPENAI_API_KEY="", CHAT_DEMO_TOKEN_DELAY="0.01"),
    )
    yield site
    site.stop()


@pytest.fixture
def user(transactional_db, django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


def logged_in_client(site: LiveSite, user) -> httpx.Client:
    """An HTTP client of the live site with the user's session and a CSRF token, as a browser has them."""
    django_client = Client()
    django_client.force_login(user)
    client = httpx.Client(base_url=site.url, timeout=10)
    client.cookies.set("sessionid", django_client.cookies["sessionid"].value)
    page = client.get("/")
    assert page.status_code == 200
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


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


def skip_or_fail(reason: str) -> NoReturn:
    """Skip a test whose outside tool is missing on this machine; under CI (env CI set) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set, so this fails instead of being skipped)", pytrace=False)
    pytest.skip(reason)


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


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

"""What the tests share that is not a fixture: the live site in a child process, its settings, and helpers."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.contrib.auth.base_user import AbstractBaseUser
from django.db import connections
from django.test import Client
from django.utils import timezone

from streaming.models import UsageLog

BASE_DIR = Path(__file__).resolve().parent.parent
TEST_API_KEY = "sk-test-Zq8vP3xL0wR7nK2mT5yB9cJ4hD6fG1sA"
MODEL = "gpt-test"
OTHER_MODEL = "gpt-test-large"
PASSWORD = "correct horse battery staple"
STREAM_URL = "/api/chat/stream"
# The live site's limits, set through its environment.
LIVE_KEEPALIVE_SECONDS = 0.5
LIVE_REQUESTS_PER_MINUTE = 30
LIVE_CONCURRENT_STREAMS = 3
LIVE_DATABASE_POOL_MAX_SIZE = 4
LIVE_SITE_DB_APPLICATION = "chatproxy-live-site"

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]


def skip_or_fail(reason: str, *, required_by: str = "CI") -> NoReturn:
    """Skip a test whose outside tool or service is missing here; fail instead when env `required_by` is set."""
    if os.environ.get(required_by):
        pytest.fail(f"{reason} ({required_by} is set, so this fails instead of being skipped)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listened on a moment ago (and nothing listens on now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_url(application_name: str) -> str:
    """The test database as a DATABASE_URL; on PostgreSQL `application_name` tags the connections."""
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


def live_site_environment(application_name: str, **extra: str) -> dict[str, str]:
    """The environment of a site in a child process; `application_name` tags its database connections."""
    return {
        "DATABASE_URL": database_url(application_name),
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


# The ASGI server the live sites run under: daphne (what `manage.py runserver` runs), or uvicorn as
# the README's production set-up runs it (uvloop, httptools). CI runs the suite under both.
LIVE_SERVER = os.environ.get("CHATPROXY_TEST_SERVER", "daphne")


def server_command(port: int) -> list[str]:
    """The command that serves the site on 127.0.0.1:`port` under `LIVE_SERVER`."""
    if LIVE_SERVER == "uvicorn":
        return [
            sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop",
            "--http", "httptools", "--lifespan", "off", "chatproxy.asgi:application",
        ]  # fmt: skip
    if LIVE_SERVER != "daphne":
        raise ValueError(f"CHATPROXY_TEST_SERVER must be daphne or uvicorn, not {LIVE_SERVER!r}")
    return [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "chatproxy.asgi:application"]


class LiveSite:
    """The site under its ASGI server (`LIVE_SERVER`) in a child process, configured only through its environment."""

    def __init__(self, log_path: Path, environment: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        # The same SECRET_KEY as this process, so sessions made here are valid there.
        env = {**os.environ, "DEBUG": "false", "SECRET_KEY": django_settings.SECRET_KEY, **environment}
        self._log = log_path.open("w")
        self.process = subprocess.Popen(
            server_command(self.port), cwd=BASE_DIR, env=env, stdout=self._log, stderr=subprocess.STDOUT
        )
        self._wait_until_listening()

    def _wait_until_listening(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{LIVE_SERVER} exited early:\n{self.log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{LIVE_SERVER} did not start listening:\n{self.log_path.read_text()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._log.close()


def logged_in_client(site: LiveSite, user: AbstractBaseUser) -> httpx.Client:
    """An HTTP client of the live site with the user's session and a CSRF token, as a browser has them."""
    django_client = Client()
    django_client.force_login(user)
    client = httpx.Client(base_url=site.url, timeout=10)
    client.cookies.set("sessionid", django_client.cookies["sessionid"].value)
    page = client.get("/")
    assert page.status_code == 200
    client.headers["X-CSRFToken"] = client.cookies["csrftoken"]
    return client


def v1_url(site: LiveSite) -> str:
    """The base URL an OpenAI SDK is given for the site's `/v1` API."""
    return f"{site.url}/v1"


def readme_code_blocks(heading: str, *languages: str) -> list[str]:
    """The fenced code blocks in these languages in a README section: from `heading` to the next heading as high."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = iter((BASE_DIR / "README.md").read_text().splitlines())
    assert heading in lines, f"README.md has no heading {heading!r}"
    blocks: list[str] = []
    block: list[str] | None = None
    fenced = False
    for line in lines:
        fence = line.strip()
        if not fenced and re.match(rf"#{{1,{level}}} ", line):
            break
        if fence.startswith("```"):
            if fenced and block is not None:
                blocks.append(textwrap.dedent("\n".join(block)) + "\n")
            block = [] if not fenced and fence[3:] in languages else None
            fenced = not fenced
        elif block is not None:
            block.append(line)
    return blocks


def wait_for_rows(user, count: int = 1, timeout: float = 5.0) -> list[UsageLog]:
    """The user's usage rows, oldest first, once there are `count` of them and all are settled (a row
    is written in progress at admission and settled when its request ends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = list(UsageLog.objects.filter(user=user).select_related("api_key").order_by("created_at", "pk"))
        if len(rows) >= count and all(row.status != UsageLog.Status.IN_PROGRESS for row in rows):
            return rows
        time.sleep(0.02)
    found = UsageLog.objects.filter(user=user).values_list("status", flat=True)
    raise AssertionError(f"expected {count} settled usage rows, found {list(found)}")


async def await_rows(user, count: int = 1, timeout: float = 5.0) -> list[UsageLog]:
    """`wait_for_rows` for an async test: in a worker thread whose connection is closed afterwards
    (left open, it would keep the PostgreSQL test database from being dropped)."""

    def rows() -> list[UsageLog]:
        try:
            return wait_for_rows(user, count, timeout)
        finally:
            connections.close_all()

    return await sync_to_async(rows, thread_sensitive=False)()


# The prompt estimate of a one-message body saying "Hi", in tokens (four characters a token, plus
# the message's overhead).
PROMPT_ESTIMATE = 5


def in_progress_row(user, *, age: float, reserved: int = 0, completion: int = 0) -> UsageLog:
    """A row as a server process leaves it when it dies: in progress, last refreshed `age` seconds ago."""
    at = timezone.now() - timedelta(seconds=age)
    return UsageLog.objects.create(
        user=user,
        created_at=at,
        model=MODEL,
        status=UsageLog.Status.IN_PROGRESS,
        prompt_tokens=PROMPT_ESTIMATE,
        completion_tokens=completion,
        tokens_estimated=True,
        reserved_tokens=reserved,
        last_seen_at=at,
    )

"""The site under test: its environment, its database, its ASGI servers, and logged-in sessions.

The site is configured only through environment variables, as in production, with every
per-user limit off (0) so the benchmark measures the relay and not the guardrails.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

from bench.answers import MODEL
from bench.http_client import ConnectionSlot, build_request
from bench.processes import BASE_DIR, python_command

ASGI_APPLICATION = "chatproxy.asgi:application"


# Only these pass from the harness's environment to the site: a developer's OPENAI_* or CACHE_URL
# must not silently change what is measured. (A `.env` file in the checkout still applies to
# variables not set here: settings.py reads it.)
PASSED_THROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "VIRTUAL_ENV")


def site_environment(
    database: Path, upstream_port: int, api_key: str, max_connections: int, overrides: dict[str, str] | None = None
) -> dict[str, str]:
    """The site's whole environment: production-like, limits off, talking to the fake upstream."""
    return {
        **{name: value for name, value in os.environ.items() if name in PASSED_THROUGH},
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1",
        "DATABASE_URL": f"sqlite:///{database}",
        "CACHE_URL": "locmemcache://",
        "OPENAI_API_KEY": api_key,
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "OPENAI_MAX_CONNECTIONS": str(max_connections),
        "CHAT_DEFAULT_MODEL": MODEL,
        "CHAT_ALLOWED_MODELS": MODEL,
        "CHAT_REQUESTS_PER_MINUTE": "0",
        "CHAT_CONCURRENT_STREAMS": "0",
        "CHAT_DAILY_TOKEN_BUDGET": "0",
        "CHAT_MONTHLY_TOKEN_BUDGET": "0",
        "CHAT_KEEPALIVE_SECONDS": "15",
        **(overrides or {}),
    }


@dataclass(frozen=True)
class Account:
    username: str
    password: str


CREATE_USERS = """
import sys
from django.contrib.auth import get_user_model
User = get_user_model()
for line in sys.stdin.read().split():
    username, password = line.split(":", 1)
    User.objects.create_user(username, password=password)
"""


def prepare_database(env: dict[str, str], users: int, timeout: float = 120.0) -> list[Account]:
    """Migrate a fresh database and create `users` accounts in it (through manage.py, same env)."""
    accounts = [Account(f"bench{index}", secrets.token_urlsafe(16)) for index in range(users)]
    _manage(env, ["migrate", "--noinput"], timeout=timeout)
    _manage(
        env,
        ["shell", "-c", CREATE_USERS],
        stdin="\n".join(f"{a.username}:{a.password}" for a in accounts),
        timeout=timeout,
    )
    return accounts


CREATE_API_KEYS = """
import sys
from django.contrib.auth import get_user_model
from streaming.api_keys import create_api_key
User = get_user_model()
for username in sys.stdin.read().split():
    print(create_api_key(user=User.objects.get(username=username), name="bench")[1])
"""


def create_api_keys(env: dict[str, str], accounts: list[Account], timeout: float = 120.0) -> tuple[str, ...]:
    """One personal API key per account, for `/v1` (Authorization: Bearer), in the accounts' order."""
    output = _manage(
        env,
        ["shell", "-c", CREATE_API_KEYS],
        stdin="\n".join(account.username for account in accounts),
        timeout=timeout,
    )
    keys = tuple(output.split()[-len(accounts) :])
    if len(keys) != len(accounts) or not all(key.startswith("chp_") for key in keys):
        raise RuntimeError(f"manage.py shell did not print {len(accounts)} API key(s)")
    return keys


def _manage(env: dict[str, str], arguments: list[str], stdin: str = "", timeout: float = 120.0) -> str:
    result = subprocess.run(
        python_command("manage.py", *arguments),
        check=False,
        cwd=BASE_DIR,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py {arguments[0]} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


@dataclass(frozen=True)
class ServerKind:
    name: str
    module: str
    # Modules the command needs besides the server itself (uvicorn's event loop and HTTP parser).
    requires: tuple[str, ...] = ()

    def installed(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in (self.module, *self.requires))

    def command(self, port: int) -> list[str]:
        if self.name == "daphne":
            # -v 0: no access log (one line per request to stdout), like uvicorn's --no-access-log.
            return python_command(
                "-m",
                "daphne",
                "-b",
                "127.0.0.1",
                "-p",
                str(port),
                "-v",
                "0",
                ASGI_APPLICATION,
            )
        # The production configuration the project recommends (README, "Running in production"):
        # uvloop and the httptools parser named explicitly, so that a missing one fails the start
        # instead of uvicorn silently falling back to asyncio and h11.
        return python_command(
            "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--loop", "uvloop", "--http", "httptools",
            "--lifespan", "off", "--no-access-log", "--log-level", "warning", ASGI_APPLICATION,
        )  # fmt: skip

    @property
    def description(self) -> str:
        if self.name == "daphne":
            return "daphne (Twisted), -v 0 (no access log)"
        return "uvicorn --loop uvloop --http httptools --lifespan off --no-access-log (the production configuration)"


SERVERS = {
    "daphne": ServerKind("daphne", "daphne"),
    "uvicorn": ServerKind("uvicorn", "uvicorn", requires=("uvloop", "httptools")),
}


@dataclass(frozen=True)
class Session:
    """What a logged-in browser holds: the cookies to send and the CSRF token for the header."""

    cookie_header: str
    csrf_token: str


def _cookies(set_cookie_headers: list[str]) -> dict[str, str]:
    cookies = {}
    for header in set_cookie_headers:
        name, _, value = header.split(";", 1)[0].partition("=")
        cookies[name.strip()] = value.strip()
    return cookies


async def log_in(port: int, account: Account, timeout: float = 30.0) -> Session:
    """Log in over HTTP as a browser does: GET the form for the CSRF cookie, POST it, keep the cookies."""
    host = f"127.0.0.1:{port}"
    slot = ConnectionSlot("127.0.0.1", port)
    try:
        page = await slot.exchange(build_request("GET", "/accounts/login/", host, {}), timeout)
        if page.status != 200:
            raise RuntimeError(f"GET /accounts/login/ answered {page.status} {page.error or ''}")
        cookies = _cookies(page.header_values("set-cookie"))
        match = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page.body)
        form_token = match.group(1).decode() if match else cookies["csrftoken"]
        form = urlencode(
            {
                "username": account.username,
                "password": account.password,
                "csrfmiddlewaretoken": form_token,
            }
        )
        headers = {
            "Cookie": f"csrftoken={cookies['csrftoken']}",
            "Content-Type": "application/x-www-form-urlencoded",
            "Referer": f"http://{host}/accounts/login/",
        }
        answer = await slot.exchange(
            build_request("POST", "/accounts/login/", host, headers, form.encode()),
            timeout,
        )
        cookies |= _cookies(answer.header_values("set-cookie"))
        if answer.status != 302 or "sessionid" not in cookies:
            raise RuntimeError(f"login of {account.username} failed: HTTP {answer.status} {answer.body[:200]!r}")
        return Session(
            f"sessionid={cookies['sessionid']}; csrftoken={cookies['csrftoken']}",
            cookies["csrftoken"],
        )
    finally:
        slot.close()


async def wait_until_site_answers(port: int, timeout: float = 30.0) -> None:
    """Listening is not enough: the first request also imports Django; wait for a real page."""
    deadline = asyncio.get_running_loop().time() + timeout
    last = ""
    while asyncio.get_running_loop().time() < deadline:
        slot = ConnectionSlot("127.0.0.1", port)
        exchange = await slot.exchange(build_request("GET", "/accounts/login/", f"127.0.0.1:{port}", {}), 10)
        slot.close()
        if exchange.status == 200:
            return
        last = exchange.error or f"HTTP {exchange.status}"
        await asyncio.sleep(0.2)
    raise RuntimeError(f"the site did not answer within {timeout:g} s ({last})")

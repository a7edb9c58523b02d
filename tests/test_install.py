"""The app installed into a Django site that has never heard of chatproxy, as the README tells people to.

Everything happens in child processes, in a temp dir: a fresh venv, `pip install` of this checkout
(with the `daphne` extra, and requirements.txt's pins as constraints), `django-admin startproject`,
the README's settings and one `include`, `migrate`, a superuser, then daphne serving the site. A
client logs in through the stock admin login form and streams an answer from the demo model. The
site keeps startproject's stock middleware, and django-environ is not installed in its venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx

from bench.processes import wait_until_listening
from tests.live_site import BASE_DIR, PASSWORD, STREAM_URL, free_port

USERNAME = "siteadmin"
# What a site adds to startproject's settings.py and urls.py (the README's "Add it to an existing
# Django site"). A bare startproject has no login page of its own, so the admin's serves.
SITE_SETTINGS = """
INSTALLED_APPS += ["streaming"]
LOGIN_URL = "admin:login"
"""
SITE_URLS = """
from django.urls import include

urlpatterns += [path("", include("streaming.urls"))]
"""
# Left out of the copy pip builds from: local state, not part of the source.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "node_modules",
    "__pycache__",
    "*.pyc",
    "build",
    "*.egg-info",
    "db.sqlite3*",
    ".env",
    ".secret_key",
    "staticfiles",
    "test-artifacts",
    ".pytest_cache",
    ".hypothesis",
    ".mypy_cache",
    ".ruff_cache",
)


def run(command: list[str | Path], *, cwd: Path, env: dict[str, str], timeout: float) -> str:
    """Runs a command to completion; on failure the assertion shows its output."""
    result = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert result.returncode == 0, f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stdout}"
    return result.stdout


def clean_environment(venv: Path) -> dict[str, str]:
    """This process's environment without the project's settings (DJANGO_SETTINGS_MODULE, DATABASE_URL,
    OPENAI_*, ...): only what finds programs, pip's index and certificates, and the venv first on PATH."""
    kept = {"HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "XDG_CACHE_HOME"}
    env = {
        name: value
        for name, value in os.environ.items()
        if name in kept or name.startswith("PIP_") or name.lower().endswith("_proxy")
    }
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}"
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def constraints_from_requirements(path: Path) -> Path:
    """requirements.txt's exact pins as a constraints file (pip refuses extras in constraints)."""
    lines = [re.sub(r"\[[^]]*\]", "", line) for line in (BASE_DIR / "requirements.txt").read_text().splitlines()]
    path.write_text("\n".join(lines) + "\n")
    return path


def log_in_through_the_admin_form(client: httpx.Client) -> None:
    """What a person does: open the chat page, get sent to the login page, fill in the form."""
    redirect = client.get("/")
    assert redirect.status_code == 302
    assert redirect.headers["location"].startswith("/admin/login/")
    form = client.get(redirect.headers["location"])
    assert form.status_code == 200
    assert "csrftoken" in client.cookies
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
    logged_in = client.post(
        redirect.headers["location"],
        data={"username": USERNAME, "password": PASSWORD, "csrfmiddlewaretoken": token, "next": "/"},
    )
    assert logged_in.status_code == 302, logged_in.text[:2000]
    assert logged_in.headers["location"] == "/"


def usage_rows(database: Path) -> list[tuple[str, str, int]]:
    with sqlite3.connect(database, timeout=5) as db:
        return db.execute(
            "SELECT log.status, log.model, log.total_tokens FROM streaming_usagelog AS log"
            " JOIN auth_user AS u ON u.id = log.user_id WHERE u.username = ?",
            (USERNAME,),
        ).fetchall()


def test_a_fresh_django_site_installs_the_app_and_streams_the_demo_answer(tmp_path: Path) -> None:
    source, venv, site = tmp_path / "source", tmp_path / "venv", tmp_path / "site"
    # pip builds in the source tree (build/, *.egg-info): a copy keeps the checkout untouched.
    shutil.copytree(BASE_DIR, source, ignore=NOT_SOURCE)
    env = clean_environment(venv)
    python = venv / "bin" / "python"

    run([sys.executable, "-m", "venv", venv], cwd=tmp_path, env=env, timeout=120)
    constraints = constraints_from_requirements(tmp_path / "constraints.txt")
    pip_install = [python, "-m", "pip", "install", "-q", "--no-compile", "-c", constraints, f"{source}[daphne]"]
    run(pip_install, cwd=tmp_path, env=env, timeout=600)
    # Only the app was installed: not this project's packages, not django-environ.
    find_specs = (
        "import importlib.util as u; print([m for m in ('chatproxy', 'tests', 'bench', 'environ') if u.find_spec(m)])"
    )
    assert run([python, "-c", find_specs], cwd=tmp_path, env=env, timeout=60).strip() == "[]"

    site.mkdir()
    run([venv / "bin" / "django-admin", "startproject", "mysite", site], cwd=tmp_path, env=env, timeout=60)
    settings_file = site / "mysite" / "settings.py"
    assert "chatproxy" not in settings_file.read_text()  # startproject's stock middleware, nothing of ours
    with settings_file.open("a") as settings:
        settings.write(SITE_SETTINGS)
    with (site / "mysite" / "urls.py").open("a") as urls:
        urls.write(SITE_URLS)
    run([python, "manage.py", "migrate", "--noinput"], cwd=site, env=env, timeout=120)
    superuser = {
        "DJANGO_SUPERUSER_USERNAME": USERNAME,
        "DJANGO_SUPERUSER_PASSWORD": PASSWORD,
        "DJANGO_SUPERUSER_EMAIL": "",
    }
    run([python, "manage.py", "createsuperuser", "--noinput"], cwd=site, env={**env, **superuser}, timeout=60)

    port = free_port()
    log = tmp_path / "daphne.log"
    with log.open("w") as log_file:
        daphne = subprocess.Popen(
            [str(venv / "bin" / "daphne"), "-b", "127.0.0.1", "-p", str(port), "mysite.asgi:application"],
            cwd=site,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_listening(daphne, port, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            log_in_through_the_admin_form(client)
            page = client.get("/")
            assert page.status_code == 200, log.read_text()
            for part in ('id="composer"', 'id="demo-label"', STREAM_URL):
                assert part in page.text

            body = {"messages": [{"role": "user", "content": "Hi"}]}
            headers = {"X-CSRFToken": client.cookies["csrftoken"], "Accept": "application/x-ndjson"}
            with client.stream("POST", STREAM_URL, json=body, headers=headers, timeout=30) as response:
                assert response.status_code == 200, response.read().decode()[:2000] + log.read_text()
                chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]

        assert not any("error" in chunk for chunk in chunks), chunks
        choices = [choice for chunk in chunks for choice in chunk["choices"]]
        text = "".join(choice["delta"].get("content") or "" for choice in choices)
        assert text.startswith("Hello! I am the chatproxy demo model"), text
        assert [choice["finish_reason"] for choice in choices if choice.get("finish_reason")] == ["stop"]
        assert chunks[-2]["choices"][0]["finish_reason"] == "stop"  # then only the usage chunk

        deadline = time.monotonic() + 5
        while not (rows := usage_rows(site / "db.sqlite3")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert rows == [("completed", "chatproxy-demo", chunks[-1]["usage"]["total_tokens"])], log.read_text()
    finally:
        daphne.terminate()
        try:
            daphne.wait(10)
        except subprocess.TimeoutExpired:
            daphne.kill()
            daphne.wait(5)

"""Production settings, the health check and the per-request log line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import AsyncClient

from tests.live_site import BASE_DIR, TEST_API_KEY


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_deploy_checks_pass_with_the_production_example():
    env = {**os.environ, **read_env_file(BASE_DIR / "deploy" / "production.env.example")}
    env["SECRET_KEY"] = "v8J3mQx0pLr5Tz2Wc7Nb4Hk9Fs1Gd6Ya0Ue3Io8Px5Rq2Lm7Zt4Kw1Vb9Nc6Sd3Fg0"
    env["DATABASE_URL"] = "sqlite:///unused.sqlite3"  # the checks do not connect
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_deploy_checks_fail_with_the_development_defaults():
    env = {**os.environ, "DEBUG": "true", "SECRET_KEY": "", "SECURE_HSTS_SECONDS": "0"}
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "SECURE_HSTS_SECONDS" in result.stderr + result.stdout


@pytest.mark.django_db(transaction=True)
async def test_healthz_reports_database_and_cache():
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "ok", "cache": "ok"}


@pytest.mark.django_db(transaction=True)
async def test_healthz_is_503_when_the_cache_is_down(settings):
    settings.CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": "redis://127.0.0.1:1/0"}
    }
    response = await AsyncClient().get("/healthz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "database": "ok", "cache": "unreachable"}


def test_each_request_logs_one_json_line_without_prompt_or_key(live_site, site_client, fake_upstream, user):
    secret_prompt = "my bank PIN is 8841"
    with site_client.stream(
        "POST", "/api/chat/stream", json={"messages": [{"role": "user", "content": secret_prompt}]}
    ) as r:
        r.read()
    site_client.post("/api/chat/stream", json={"messages": []})
    log = live_site.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith('{"event":"chat_request"')]
    mine = [line for line in lines if line["user_id"] == user.pk]
    assert [line["status"] for line in mine] == ["completed", "refused"]
    completed, refused = mine
    assert completed["total_tokens"] == 18 and completed["duration_ms"] >= 0 and "ttft_ms" in completed
    assert refused["http_status"] == 400 and refused["code"] == "invalid_messages"
    assert secret_prompt not in log and TEST_API_KEY not in log

"""Every refusal is a JSON error with the right status; upstream failures leave an `error` usage row."""

from __future__ import annotations

import httpx
import pytest
from django.test import AsyncClient

from streaming.conf import AppSettings
from streaming.models import UsageLog
from tests.fake_upstream import Reply
from tests.live_site import MODEL, OTHER_MODEL, STREAM_URL, TEST_API_KEY, free_port

VALID = {"messages": [{"role": "user", "content": "Hi"}]}


def assert_error(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]


def test_anonymous_gets_401_json_not_a_login_redirect(live_site, fake_upstream, transactional_db):
    with httpx.Client(base_url=live_site.url) as client:
        error = assert_error(client.post(STREAM_URL, json=VALID), 401, "not_authenticated")
    assert error["type"] == "authentication_error"
    assert fake_upstream.requests == []


def test_missing_or_wrong_csrf_token_gets_403(site_client, fake_upstream):
    # The message names Django's reason: the session front turns Django's own CSRF refusal into
    # the API's error (by overriding CsrfViewMiddleware._reject, which a Django upgrade could change).
    without = site_client.post(STREAM_URL, json=VALID, headers={"X-CSRFToken": ""})
    assert "has incorrect length" in assert_error(without, 403, "csrf_failed")["message"]
    wrong = site_client.post(STREAM_URL, json=VALID, headers={"X-CSRFToken": "x" * 32})
    assert "HTTP header incorrect" in assert_error(wrong, 403, "csrf_failed")["message"]
    assert fake_upstream.requests == []


def test_cross_site_post_is_refused(site_client, fake_upstream):
    response = site_client.post(STREAM_URL, json=VALID, headers={"Origin": "https://evil.example"})
    assert "Origin checking failed" in assert_error(response, 403, "csrf_failed")["message"]
    assert fake_upstream.requests == []


def test_wrong_method_gets_405(site_client):
    response = site_client.get(STREAM_URL)
    assert_error(response, 405, "method_not_allowed")
    assert response.headers["allow"] == "POST"


def test_unknown_api_path_gets_json_404(site_client):
    assert_error(site_client.post("/api/chat/nope", json=VALID), 404, "not_found")


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        (b"{not json", "invalid_json", "JSON"),
        (b"\xff\xfe{}", "invalid_json", "JSON"),
        (b"[1, 2]", "invalid_json", "object"),
        (b'{"messages": []}', "invalid_messages", "messages"),
        (b'{"messages": "hi"}', "invalid_messages", "messages"),
        (b'{"messages": [{"role": "tool", "content": "x"}]}', "invalid_role", "messages[0].role"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "invalid_content", "messages[0].content"),
        (b'{"messages": [{"role": "user"}]}', "invalid_content", "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}', "invalid_max_tokens", "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": "9"}', "invalid_max_tokens", "max_tokens"),
        (b'{"messages": [{"role": "user", "content": "x"}], "temperature": 3}', "invalid_temperature", "temperature"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": false}', "stream_required", "'stream'"),
    ],
)
def test_bad_bodies_get_400_naming_the_field(site_client, fake_upstream, user, body, code, named):
    response = site_client.post(STREAM_URL, content=body, headers={"Content-Type": "application/json"})
    assert named in assert_error(response, 400, code)["message"]
    assert fake_upstream.requests == []
    assert not UsageLog.objects.exists()


def test_model_outside_the_allowed_list_names_the_allowed_ones(site_client, fake_upstream):
    response = site_client.post(STREAM_URL, json={**VALID, "model": "gpt-5-ultra"})
    message = assert_error(response, 400, "model_not_allowed")["message"]
    assert MODEL in message and OTHER_MODEL in message
    assert fake_upstream.requests == []


def test_oversized_body_gets_413(site_client, fake_upstream):
    # The live site runs with the default cap.
    huge = {"messages": [{"role": "user", "content": "x" * (AppSettings.CHAT_MAX_REQUEST_BYTES + 1)}]}
    assert_error(site_client.post(STREAM_URL, json=huge), 413, "body_too_large")
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    ("reply", "status", "code"),
    [
        (
            Reply(status=401, error_message=f"Incorrect API key provided: {TEST_API_KEY}."),
            502,
            "upstream_authentication_failed",
        ),
        (
            Reply(status=429, error_message="Rate limit reached.", error_headers={"Retry-After": "7"}),
            503,
            "upstream_rate_limited",
        ),
        (Reply(status=503, error_message="The engine is overloaded."), 503, "upstream_overloaded"),
        (Reply(status=500, error_message="The server had an error."), 502, "upstream_status_500"),
        (
            Reply(status=400, error_message="This model's maximum context length is 8 tokens."),
            400,
            "upstream_rejected_request",
        ),
    ],
    ids=["401", "429", "503", "500", "400"],
)
def test_upstream_failures_before_streaming_are_mapped(site_client, fake_upstream, user, reply, status, code):
    fake_upstream.will_reply(reply)
    response = site_client.post(STREAM_URL, json=VALID)
    error = assert_error(response, status, code)
    assert TEST_API_KEY not in response.text and TEST_API_KEY[:12] not in response.text
    if reply.status != 200:
        assert reply.error_message.split(":")[0] in error["message"]
    if reply.status == 429:
        assert response.headers["retry-after"] == "7"
    row = UsageLog.objects.get(user=user)
    assert row.status == "error" and row.error_message == error["message"]
    assert TEST_API_KEY not in row.error_message


@pytest.mark.django_db(transaction=True)
async def test_refused_upstream_connection_gets_502(settings, django_user_model):
    settings.OPENAI_BASE_URL = f"http://127.0.0.1:{free_port()}/v1"
    user = await django_user_model.objects.acreate_user("bob", password="pw-unused-here")
    client = AsyncClient(enforce_csrf_checks=False)
    await client.aforce_login(user)
    response = await client.post(STREAM_URL, VALID, content_type="application/json")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    row = await UsageLog.objects.aget(user=user)
    assert row.status == "error" and row.duration_ms >= 0

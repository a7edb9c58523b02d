"""With no API key, the built-in demo model answers through the same SDK and relay path."""

import json

from streaming.models import UsageLog


def test_demo_page_is_labelled_and_a_question_streams_an_answer(demo_client, user):
    page = demo_client.get("/")
    assert 'id="demo-label"' in page.text and "chatproxy-demo" in page.text

    body = {"messages": [{"role": "user", "content": "What is chatproxy?"}]}
    with demo_client.stream("POST", "/api/chat/stream", json=body) as response:
        assert response.status_code == 200
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]

    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "demo model" in text and '"What is chatproxy?"' in text
    assert len(chunks) > 20, "the demo answer should stream word by word"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    usage = chunks[-1]["usage"]
    row = UsageLog.objects.get(user=user)
    assert (row.status, row.model) == ("completed", "chatproxy-demo")
    assert not row.tokens_estimated and row.total_tokens == usage["total_tokens"]


def test_demo_model_honours_max_tokens_and_refuses_other_models(demo_client):
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
    with demo_client.stream("POST", "/api/chat/stream", json=body) as response:
        chunks = [json.loads(line) for line in response.iter_lines() if line.strip()]
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3

    refused = demo_client.post("/api/chat/stream", json={**body, "model": "gpt-4o"})
    assert refused.status_code == 400 and "chatproxy-demo" in refused.json()["error"]["message"]

"""Saved conversations through the page's stream API, on the live site: the history rebuilt from the
database, the user's message saved at admission and the answer once the stream ends."""

from __future__ import annotations

import json
import time

import httpx

from streaming.models import Conversation, ConversationMessage, UsageLimit
from tests.fake_upstream import Reply, ScriptedToolCall
from tests.live_site import STREAM_URL, wait_for_rows


def stream(client: httpx.Client, body: dict) -> tuple[httpx.Response, list[dict]]:
    with client.stream("POST", STREAM_URL, json=body) as response:
        lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
    return response, lines


def saved(conversation_id: str) -> list[tuple[str, object, str]]:
    """The conversation's messages as saved: role, content, status; waiting for the answer's."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        messages = list(ConversationMessage.objects.filter(conversation_id=conversation_id).order_by("id"))
        if messages and messages[-1].role == "assistant":
            break
        time.sleep(0.02)
    return [(message.role, message.content, message.status) for message in messages]


def test_a_new_conversation_is_saved_and_continued_from_the_database(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["Paris", "."]), Reply(pieces=["About 2 million."]))
    response, _ = stream(site_client, {"conversation": "new", "messages": [{"role": "user", "content": "Capital?"}]})
    conversation_id = response.headers["chatproxy-conversation"]
    assert response.status_code == 200 and response.headers["chatproxy-history-omitted"] == "0"
    assert saved(conversation_id) == [("user", "Capital?", "complete"), ("assistant", "Paris.", "complete")]
    conversation = Conversation.objects.get(pk=conversation_id)
    assert conversation.user == user and conversation.title == "Capital?"

    response, lines = stream(
        site_client, {"conversation": conversation_id, "messages": [{"role": "user", "content": "Population?"}]}
    )
    assert response.status_code == 200 and response.headers["chatproxy-conversation"] == conversation_id
    sent = fake_upstream.requests[-1].json()["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("user", "Capital?"),
        ("assistant", "Paris."),
        ("user", "Population?"),
    ]
    assert saved(conversation_id)[-1] == ("assistant", "About 2 million.", "complete")
    rows = wait_for_rows(user, count=2)
    assert ConversationMessage.objects.get(content="About 2 million.").usage_id == rows[-1].pk


def test_a_stopped_answer_is_saved_as_stopped_with_its_partial_text(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(50)], delay=0.05))
    with site_client.stream(
        "POST", STREAM_URL, json={"conversation": "new", "messages": [{"role": "user", "content": "Go on"}]}
    ) as response:
        conversation_id = response.headers["chatproxy-conversation"]
        received = 0
        for line in response.iter_lines():
            received += '"content":"word' in line
            if received == 3:
                break
    (role, content, status) = saved(conversation_id)[-1]
    assert role == "assistant" and status == "stopped"
    assert isinstance(content, str) and content.startswith("word0 word1 word2") and "word49" not in content


def test_a_tool_call_is_saved_and_its_result_continues_the_conversation(site_client, fake_upstream, user):
    call = ScriptedToolCall(id="call_1", name="get_local_time", argument_pieces=("{}",))
    fake_upstream.will_reply(Reply(pieces=[], tool_calls=[call]), Reply(pieces=["It is noon."]))
    tools = [{"type": "function", "function": {"name": "get_local_time", "parameters": {"type": "object"}}}]
    first = {"conversation": "new", "tools": tools, "messages": [{"role": "user", "content": "Time?"}]}
    response, lines = stream(site_client, first)
    conversation_id = response.headers["chatproxy-conversation"]
    answer = ConversationMessage.objects.get(conversation_id=conversation_id, role="assistant")
    assert answer.tool_calls == [
        {"id": "call_1", "type": "function", "function": {"name": "get_local_time", "arguments": "{}"}}
    ]

    result = {"role": "tool", "tool_call_id": "call_1", "content": "12:00"}
    response, lines = stream(site_client, {"conversation": conversation_id, "tools": tools, "messages": [result]})
    assert response.status_code == 200
    sent = fake_upstream.requests[-1].json()["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool"] and sent[1]["tool_calls"][0]["id"] == "call_1"
    assert saved(conversation_id)[-1] == ("assistant", "It is noon.", "complete")


def test_another_users_conversation_is_not_found(site_client, fake_upstream, user, django_user_model):
    bob = django_user_model.objects.create_user("bob", password="x")
    theirs = Conversation.objects.create(user=bob, title="Bob's", model="m")
    response = site_client.post(
        STREAM_URL, json={"conversation": str(theirs.pk), "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert response.status_code == 404 and response.json()["error"]["code"] == "conversation_not_found"
    assert fake_upstream.requests == []


def test_a_conversation_with_an_answer_still_streaming_is_busy(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["slow "] * 20, delay=0.05))
    with site_client.stream(
        "POST", STREAM_URL, json={"conversation": "new", "messages": [{"role": "user", "content": "One"}]}
    ) as response:
        conversation_id = response.headers["chatproxy-conversation"]
        busy = site_client.post(
            STREAM_URL, json={"conversation": conversation_id, "messages": [{"role": "user", "content": "Two"}]}
        )
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "conversation_busy"
        assert busy.headers["retry-after"] == "1"
        response.read()
    assert len(fake_upstream.requests) == 1


def test_the_oldest_history_is_left_out_to_fit_the_input_limit(site_client, fake_upstream, user):
    """CHAT_MAX_INPUT_CHARS is 100,000: three 30,000-character questions fit, a fourth does not."""
    UsageLimit.objects.create(user=user, requests_per_minute=0)
    fake_upstream.default_reply = Reply(pieces=["ok"])
    conversation_id, omitted = "new", []
    for turn in range(4):
        question = {"role": "user", "content": f"{turn}" + "x" * 29_999}
        response, _ = stream(site_client, {"conversation": conversation_id, "messages": [question]})
        assert response.status_code == 200
        conversation_id = response.headers["chatproxy-conversation"]
        omitted.append(response.headers["chatproxy-history-omitted"])
        saved(conversation_id)
    assert omitted == ["0", "0", "0", "2"]  # the oldest exchange, whole: its question and its answer
    sent = fake_upstream.requests[-1].json()["messages"]
    assert [m["content"][0] for m in sent] == ["1", "o", "2", "o", "3"]
    assert len(ConversationMessage.objects.filter(conversation_id=conversation_id)) == 8  # nothing deleted

"""Saved conversations: a turn's history rebuilt from the database within the request's bounds,
its messages and answer saved, and the owner's list, rename and delete (nobody else's)."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone
from django.utils.html import json_script

from streaming.conversations import (
    ConversationTurn,
    conversation_detail,
    conversations_for,
    open_turn,
    title_for,
)
from streaming.errors import ApiError, error_response
from streaming.models import Conversation, ConversationMessage, UsageLog
from tests.live_site import MODEL, OTHER_MODEL, PASSWORD

LIST_URL = "/api/conversations"
PNG = "data:image/png;base64,iVBORw0KGgo="


def client_of(user, **options) -> Client:
    client = Client(**options)
    client.force_login(user)
    return client


def api_url(conversation_id) -> str:
    return f"/api/conversations/{conversation_id}"


def user_message(text: str, *images: str) -> dict[str, Any]:
    if not images:
        return {"role": "user", "content": text}
    parts = [{"type": "image_url", "image_url": {"url": url}} for url in images]
    return {"role": "user", "content": [{"type": "text", "text": text}, *parts]}


def tool_call(call_id: str, name: str = "local_time") -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def in_progress_row(user, *, seen_ago: float = 0) -> UsageLog:
    now = timezone.now()
    return UsageLog.objects.create(
        user=user,
        created_at=now - timedelta(seconds=seen_ago),
        model=MODEL,
        status=UsageLog.Status.IN_PROGRESS,
        last_seen_at=now - timedelta(seconds=seen_ago),
    )


def settle(row: UsageLog, status: str, *, tokens: int = 30) -> UsageLog:
    row.status = status
    row.total_tokens = tokens
    row.save()
    return row


def take_turn(
    user,
    conversation: str,
    messages: list[dict[str, Any]],
    *,
    answer: dict[str, Any] | None = None,
    status: str = UsageLog.Status.COMPLETED,
    model: str = MODEL,
) -> tuple[dict[str, Any], ConversationTurn]:
    """One request of the page, as the stream view runs it: open, accept (save), answer (save)."""
    body, turn = open_turn(user=user, data={"conversation": conversation, "messages": messages, "model": model})
    assert turn is not None
    row = in_progress_row(user)
    turn.save_request(usage=row)
    turn.save_answer(
        message={"role": "assistant", "content": "ok"} if answer is None else answer, usage=settle(row, status)
    )
    return body, turn


def new_conversation(user, first: str = "Hello there", *, answer: str = "Hi!") -> str:
    _, turn = take_turn(user, "new", [user_message(first)], answer={"content": answer})
    return str(turn.conversation.id)


def api_messages(body: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(message["role"], message.get("content")) for message in body["messages"]]


# --- A turn's history --------------------------------------------------------------------------


def test_a_body_without_a_conversation_is_relayed_as_sent(alice):
    data = {"messages": [user_message("hi")], "model": MODEL}
    assert open_turn(user=alice, data=data) == (data, None)
    assert open_turn(user=alice, data={**data, "conversation": None}) == (data, None)
    assert not Conversation.objects.exists()


def test_a_new_conversation_is_saved_when_the_request_is_accepted(alice):
    body, turn = open_turn(
        user=alice,
        data={"conversation": "new", "messages": [user_message("Plan a trip\nto Oslo", PNG)], "model": MODEL},
    )
    assert turn is not None and body["messages"] == [user_message("Plan a trip\nto Oslo", PNG)]
    assert "conversation" not in body and turn.omitted == 0
    assert not Conversation.objects.exists(), "nothing is stored before the request is accepted"

    row = in_progress_row(alice)
    turn.save_request(usage=row)

    [saved] = conversations_for(user=alice)
    assert saved["title"] == "Plan a trip" and saved["model"] == MODEL and saved["id"] == str(turn.conversation.id)
    [message] = conversation_detail(user=alice, conversation_id=saved["id"])["messages"]
    assert message["content"] == user_message("Plan a trip\nto Oslo", PNG)["content"], "images are kept as sent"
    assert message["usage"] == {"status": "in_progress", "total_tokens": 0}, "the page can tell an answer is pending"


def test_titles_come_from_the_first_line_cut_at_a_word():
    long = "Explain how the relay streams chunks from the upstream to the browser without buffering"
    title = title_for([user_message(long)])
    assert title == "Explain how the relay streams chunks from the upstream to…"
    assert (
        title_for([{"role": "developer", "content": "Be brief"}, user_message("  \n  Second   line ")]) == "Second line"
    )
    assert title_for([user_message("", PNG)]) == "Untitled"


def test_continuing_sends_the_saved_history_before_the_new_message(alice):
    conversation = new_conversation(alice, "What is 2+2?", answer="4.")
    take_turn(alice, conversation, [user_message("And 3+3?")], answer={"content": "6, partly"}, status="cancelled")
    take_turn(alice, conversation, [user_message("Still there?")], answer={"content": None}, status="error")

    body, turn = open_turn(
        user=alice, data={"conversation": conversation, "messages": [user_message("Last one")], "model": OTHER_MODEL}
    )
    assert api_messages(body) == [
        ("user", "What is 2+2?"),
        ("assistant", "4."),
        ("user", "And 3+3?"),
        ("assistant", "6, partly"),  # stopped: its partial text stays in the history
        ("user", "Still there?"),  # its answer failed before any text: left out
        ("user", "Last one"),
    ]
    assert turn.omitted == 0 and body["model"] == OTHER_MODEL and "conversation" not in body

    turn.save_request(usage=in_progress_row(alice))
    assert conversations_for(user=alice)[0]["model"] == OTHER_MODEL, "the conversation goes on with the latest model"


def test_the_oldest_whole_exchanges_are_left_out_to_stay_within_the_message_limit(alice, settings):
    conversation = new_conversation(alice, "one", answer="1")
    for word, answer in (("two", "2"), ("three", "3")):
        take_turn(alice, conversation, [user_message(word)], answer={"content": answer})
    settings.CHAT_MAX_MESSAGES = 4  # room for the new message and one and a half exchanges

    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("four")]})
    assert api_messages(body) == [("user", "three"), ("assistant", "3"), ("user", "four")]
    assert turn is not None and turn.omitted == 4
    assert len(conversation_detail(user=alice, conversation_id=conversation)["messages"]) == 6, "nothing is deleted"


def test_the_input_characters_limit_leaves_out_the_oldest_history(alice, settings):
    conversation = new_conversation(alice, "a" * 40, answer="b" * 40)
    take_turn(alice, conversation, [user_message("c" * 10)], answer={"content": "d" * 10})
    settings.CHAT_MAX_INPUT_CHARS = 79  # 40 + 40 + 10 + 10 + the new 5 would be 105

    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("e" * 5)]})
    assert api_messages(body) == [("user", "c" * 10), ("assistant", "d" * 10), ("user", "e" * 5)]
    assert turn is not None and turn.omitted == 2


def test_images_in_the_history_count_against_the_image_limit(alice, settings):
    settings.CHAT_MAX_IMAGES = 2
    _, first = take_turn(alice, "new", [user_message("this?", PNG, PNG)], answer={"content": "two images"})
    conversation = str(first.conversation.id)
    take_turn(alice, conversation, [user_message("and this?", PNG)], answer={"content": "one image"})

    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("last", PNG)]})
    assert body["messages"] == [
        user_message("and this?", PNG),
        {"role": "assistant", "content": "one image"},
        user_message("last", PNG),
    ]
    assert turn is not None and turn.omitted == 2


def test_new_messages_are_never_left_out_even_when_over_the_limits(alice, settings):
    conversation = new_conversation(alice)
    settings.CHAT_MAX_INPUT_CHARS = 10
    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("x" * 50)]})
    assert api_messages(body) == [("user", "x" * 50)], "the schema refuses it, naming the limit"
    assert turn is not None and turn.omitted == 2


def test_tool_results_keep_the_answer_that_called_the_tool(alice, settings):
    conversation = new_conversation(alice, "hi", answer="hello")
    calls = [tool_call("call_1")]
    take_turn(alice, conversation, [user_message("What time is it?")], answer={"content": None, "tool_calls": calls})
    settings.CHAT_MAX_MESSAGES = 3

    results = [{"role": "tool", "tool_call_id": "call_1", "content": "14:05"}]
    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": results})
    assert body["messages"] == [
        user_message("What time is it?"),
        {"role": "assistant", "content": None, "tool_calls": calls},
        *results,
    ]
    assert turn is not None and turn.omitted == 2

    turn.save_request(usage=in_progress_row(alice))
    [*_, saved] = conversation_detail(user=alice, conversation_id=conversation)["messages"]
    assert (saved["role"], saved["tool_call_id"], saved["content"]) == ("tool", "call_1", "14:05")


def test_a_history_never_starts_inside_a_tool_exchange(alice, settings):
    conversation = new_conversation(alice, "hi", answer="hello")
    take_turn(
        alice, conversation, [user_message("time?")], answer={"content": None, "tool_calls": [tool_call("call_1")]}
    )
    take_turn(
        alice,
        conversation,
        [{"role": "tool", "tool_call_id": "call_1", "content": "14:05"}],
        answer={"content": "It is 14:05."},
    )
    settings.CHAT_MAX_MESSAGES = 4  # the tool exchange is 4 messages: with the new one it cannot fit

    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("thanks")]})
    assert api_messages(body) == [("user", "thanks")]
    assert turn is not None and turn.omitted == 6


def test_tool_calls_nobody_answered_are_left_out_of_the_history(alice):
    conversation = new_conversation(alice, "hi", answer="hello")
    take_turn(
        alice,
        conversation,
        [user_message("time?")],
        answer={"content": "Let me check", "tool_calls": [tool_call("call_1")]},
        status="cancelled",
    )
    body, _ = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("never mind")]})
    assert body["messages"][-2:] == [{"role": "assistant", "content": "Let me check"}, user_message("never mind")]


def test_a_malformed_messages_field_is_left_for_the_schema_to_refuse(alice):
    conversation = new_conversation(alice)
    for messages in ("hello", None):
        body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": messages})
        assert turn is not None and body["messages"] == messages
    junk = [42, {"role": "user", "content": [7]}, {"role": "assistant", "tool_calls": "x"}]
    body, _ = open_turn(user=alice, data={"conversation": conversation, "messages": junk})
    assert body["messages"][-3:] == junk


def test_someone_elses_or_an_unknown_conversation_is_not_found(alice, bob):
    conversation = new_conversation(alice)
    for reference in (conversation, "5e9c2a1e-3b7d-4f4e-9a53-2b1f0c6d8e71"):
        with pytest.raises(ApiError) as refused:
            open_turn(user=bob, data={"conversation": reference, "messages": [user_message("hi")]})
        assert (refused.value.status, refused.value.code) == (404, "conversation_not_found")


def test_a_conversation_that_is_not_new_or_an_id_is_refused_by_name(alice):
    for reference in ("latest", 42, ["new"]):
        with pytest.raises(ApiError) as refused:
            open_turn(user=alice, data={"conversation": reference, "messages": [user_message("hi")]})
        assert (refused.value.status, refused.value.code) == (400, "invalid_conversation")
        assert "'conversation'" in refused.value.message


def test_a_conversation_whose_answer_is_still_streaming_is_busy(alice):
    conversation = new_conversation(alice)
    body, turn = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("next")]})
    assert turn is not None
    streaming = in_progress_row(alice)
    turn.save_request(usage=streaming)

    with pytest.raises(ApiError) as refused:
        open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("again")]})
    response = error_response(refused.value)
    assert response.status_code == 409 and response["Retry-After"] == "1"
    assert refused.value.code == "conversation_busy"

    UsageLog.objects.filter(pk=streaming.pk).update(last_seen_at=timezone.now() - timedelta(seconds=121))
    _, later = open_turn(user=alice, data={"conversation": conversation, "messages": [user_message("again")]})
    assert later is not None, "a row its dead process stopped reporting does not hold the conversation"


def test_with_saving_turned_off_a_conversation_is_refused(alice, settings):
    settings.CHAT_SAVE_CONVERSATIONS = False
    with pytest.raises(ApiError) as refused:
        open_turn(user=alice, data={"conversation": "new", "messages": [user_message("hi")]})
    assert (refused.value.status, refused.value.code) == (400, "conversations_disabled")
    data = {"messages": [user_message("hi")]}
    assert open_turn(user=alice, data=data) == (data, None)


# --- The answer --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("usage_status", "saved_status"),
    [("completed", "complete"), ("cancelled", "stopped"), ("error", "failed"), ("interrupted", "failed")],
)
def test_the_answer_is_saved_with_its_outcome(alice, usage_status, saved_status):
    _, turn = take_turn(alice, "new", [user_message("hi")], answer={"content": "partial"}, status=usage_status)
    [question, answer] = conversation_detail(user=alice, conversation_id=turn.conversation.id)["messages"]
    assert (answer["role"], answer["content"], answer["status"]) == ("assistant", "partial", saved_status)
    assert answer["usage"] == {"status": usage_status, "total_tokens": 30}


def test_an_answer_is_saved_once_however_often_its_end_is_reported(alice):
    _, turn = open_turn(user=alice, data={"conversation": "new", "messages": [user_message("hi")]})
    assert turn is not None
    row = in_progress_row(alice)
    turn.save_request(usage=row)
    settle(row, "completed")
    calls = [tool_call("call_1")]
    turn.save_answer(message={"role": "assistant", "content": None, "tool_calls": calls}, usage=row)
    turn.save_answer(message={"role": "assistant", "content": "again"}, usage=row)

    roles = [
        (m["role"], m["content"], m["tool_calls"])
        for m in conversation_detail(user=alice, conversation_id=turn.conversation.id)["messages"]
    ]
    assert roles == [("user", "hi", None), ("assistant", None, calls)]


def test_a_turn_bumps_its_conversation_to_the_top_of_the_list(alice):
    older = new_conversation(alice, "older")
    newer = new_conversation(alice, "newer")
    assert [c["id"] for c in conversations_for(user=alice)] == [newer, older]
    take_turn(alice, older, [user_message("back to this")])
    assert [c["id"] for c in conversations_for(user=alice)] == [older, newer]


# --- The API and the page ----------------------------------------------------------------------


def test_the_list_holds_only_the_users_own_conversations_latest_first(alice, bob):
    first = new_conversation(alice, "first")
    second = new_conversation(alice, "second")
    new_conversation(bob, "bob's")

    response = client_of(alice).get(LIST_URL)
    assert response.status_code == 200
    listed = response.json()
    assert listed["object"] == "list"
    assert [(c["id"], c["title"]) for c in listed["data"]] == [(second, "second"), (first, "first")]
    assert set(listed["data"][0]) == {"id", "title", "model", "created_at", "updated_at"}


def test_the_owner_reads_a_conversation_with_its_messages(alice):
    conversation = new_conversation(alice, "hi", answer="hello")
    detail = client_of(alice).get(api_url(conversation)).json()
    assert detail["id"] == conversation and detail["title"] == "hi"
    assert [(m["role"], m["content"], m["status"]) for m in detail["messages"]] == [
        ("user", "hi", "complete"),
        ("assistant", "hello", "complete"),
    ]


def test_nobody_else_can_read_rename_delete_or_open_a_conversation(alice, bob):
    conversation = new_conversation(alice, "private")
    client = client_of(bob)
    for response in (
        client.get(api_url(conversation)),
        client.patch(api_url(conversation), {"title": "mine now"}, content_type="application/json"),
        client.delete(api_url(conversation)),
    ):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "conversation_not_found"
    assert client.get(f"/c/{conversation}/").status_code == 404
    assert conversations_for(user=alice)[0]["title"] == "private"
    assert ConversationMessage.objects.filter(conversation_id=conversation).count() == 2


def test_renaming_trims_the_title_and_refuses_an_empty_or_long_one(alice):
    conversation = new_conversation(alice)
    client = client_of(alice)
    response = client.patch(api_url(conversation), {"title": "  Trip to Oslo  "}, content_type="application/json")
    assert response.status_code == 200 and response.json()["title"] == "Trip to Oslo"

    for body in ({"title": "   "}, {"title": "x" * 201}, {"title": 5}, {}):
        response = client.patch(api_url(conversation), body, content_type="application/json")
        assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_title"
        assert "'title'" in response.json()["error"]["message"]
    response = client.patch(api_url(conversation), {"title": "ok", "model": "x"}, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "unknown_field"
    response = client.patch(api_url(conversation), "not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    assert conversations_for(user=alice)[0]["title"] == "Trip to Oslo"


def test_deleting_removes_the_messages_and_keeps_the_usage_rows(alice):
    conversation = new_conversation(alice)
    rows = list(UsageLog.objects.filter(user=alice).values_list("pk", flat=True))
    response = client_of(alice).delete(api_url(conversation))
    assert response.status_code == 204
    assert not Conversation.objects.exists() and not ConversationMessage.objects.exists()
    assert list(UsageLog.objects.filter(user=alice).values_list("pk", flat=True)) == rows and rows
    assert client_of(alice).get(api_url(conversation)).status_code == 404


def test_writes_need_the_csrf_token(alice):
    conversation = new_conversation(alice)
    client = client_of(alice, enforce_csrf_checks=True)
    for response in (
        client.patch(api_url(conversation), {"title": "forged"}, content_type="application/json"),
        client.delete(api_url(conversation)),
    ):
        assert response.status_code == 403 and response.json()["error"]["code"] == "csrf_failed"
    assert Conversation.objects.get().title == "Hello there"

    client.get("/")  # the page sets the csrftoken cookie its script sends back
    token = client.cookies["csrftoken"].value
    renamed = client.patch(
        api_url(conversation), {"title": "Renamed"}, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert renamed.status_code == 200
    assert client.delete(api_url(conversation), headers={"X-CSRFToken": token}).status_code == 204


def test_the_api_answers_json_to_the_logged_out_and_to_other_methods(alice):
    conversation = new_conversation(alice)
    anonymous = Client()
    for url in (LIST_URL, api_url(conversation)):
        response = anonymous.get(url)
        assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"
    response = client_of(alice).post(LIST_URL)
    assert response.status_code == 405 and response["Allow"] == "GET"
    response = client_of(alice).put(api_url(conversation))
    assert response.status_code == 405 and response["Allow"] == "GET, PATCH, DELETE"


def test_the_page_on_a_conversation_carries_it_and_the_list(alice, settings):
    conversation = new_conversation(alice, "hi", answer="hello")
    other = new_conversation(alice, "another")
    response = client_of(alice).get(f"/c/{conversation}/")
    assert response.status_code == 200
    context = response.context
    assert context["conversation"]["id"] == conversation
    assert [m["content"] for m in context["conversation"]["messages"]] == ["hi", "hello"]
    assert [c["id"] for c in context["conversations"]] == [other, conversation]
    assert context["save_conversations"] is True
    assert context["max_images"] == settings.CHAT_MAX_IMAGES
    assert context["max_image_url_bytes"] == settings.CHAT_MAX_IMAGE_URL_BYTES
    assert context["default_model"] == MODEL and context["login_url"] == "/accounts/login/"
    for name in ("conversation", "conversations"):
        assert json.loads(json.dumps(context[name])) == context[name], "plain JSON: ISO dates, ids as strings"
        assert json_script(context[name], name)  # how the template hands them to its script

    blank = client_of(alice).get("/")
    assert blank.context["conversation"] is None and len(blank.context["conversations"]) == 2


def test_the_page_on_a_conversation_sends_the_logged_out_to_log_in(alice):
    conversation = new_conversation(alice)
    response = Client().get(f"/c/{conversation}/")
    assert response.status_code == 302 and response["Location"] == f"/accounts/login/?next=/c/{conversation}/"


# --- The admin ---------------------------------------------------------------------------------


def test_superusers_read_conversations_in_the_admin_and_cannot_edit_them(alice, django_user_model):
    _, turn = take_turn(alice, "new", [user_message("Secret plans", PNG)], answer={"content": "Noted."})
    root = django_user_model.objects.create_superuser("root", password=PASSWORD)
    client = client_of(root)
    change_url = f"/admin/streaming/conversation/{turn.conversation.id}/change/"

    listing = client.get("/admin/streaming/conversation/").content.decode()
    assert "Secret plans" in listing
    page = client.get(change_url).content.decode()
    assert "Noted." in page and "[image, " in page and PNG not in page, "an image shows as its size"
    row = UsageLog.objects.get(conversation_messages__role="assistant")
    assert f'href="/admin/streaming/usagelog/{row.pk}/change/"' in page
    assert 'name="title"' not in page, "read-only: no form fields"
    assert client.get("/admin/streaming/conversation/add/").status_code == 403
    assert client.post(change_url, {"title": "edited"}).status_code == 403
    assert Conversation.objects.get().title == "Secret plans"


def test_staff_who_are_not_superusers_never_see_conversations(alice, django_user_model):
    conversation = new_conversation(alice, "Secret plans")
    clerk = django_user_model.objects.create_user("clerk", password=PASSWORD, is_staff=True)
    clerk.user_permissions.set(Permission.objects.filter(codename__endswith="conversation"))
    client = client_of(clerk)
    assert "Secret plans" not in client.get("/admin/").content.decode()
    assert "/admin/streaming/conversation/" not in client.get("/admin/").content.decode()
    assert client.get("/admin/streaming/conversation/").status_code == 403
    assert client.get(f"/admin/streaming/conversation/{conversation}/change/").status_code == 403


def test_superusers_may_delete_a_conversation_and_its_usage_rows_stay(alice, django_user_model):
    conversation = new_conversation(alice)
    root = django_user_model.objects.create_superuser("root", password=PASSWORD)
    response = client_of(root).post(f"/admin/streaming/conversation/{conversation}/delete/", {"post": "yes"})
    assert response.status_code == 302
    assert not Conversation.objects.exists() and UsageLog.objects.filter(user=alice).count() == 1

"""Saved conversations: the chat page's turns kept on the server, and rebuilt into a request's history.

A turn of the page's stream API names its conversation (`"conversation": "new"` or an id) and
sends only its new messages; `open_turn` puts the saved history before them, within the request's
input bounds. The view saves the new messages once the request is accepted
(`ConversationTurn.save_request`) and the answer once the stream has ended (`save_answer`).

Reads for the page and its API are the selectors below; each takes the user explicitly and
answers another user's conversation exactly as a missing one (404), so ids reveal nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.contrib.auth.base_user import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from .conf import app_settings
from .errors import conversation_busy, conversation_not_found, conversations_disabled, invalid_request
from .models import Conversation, ConversationMessage, UsageLog
from .schemas import fields
from .schemas.chat_completions import message_texts
from .usage import STALE_SECONDS

NEW_CONVERSATION = "new"
# A request's usage row still in progress and reported alive this recently holds its conversation:
# the next turn waits for its answer. A row silent for longer belongs to a process that died.
BUSY_WITHIN = timedelta(seconds=STALE_SECONDS)
TITLE_LENGTH = 60
UNTITLED = "Untitled"

_Role = ConversationMessage.Role
_ANSWER_STATUSES: dict[str, str] = {
    UsageLog.Status.COMPLETED: ConversationMessage.Status.COMPLETE,
    UsageLog.Status.CANCELLED: ConversationMessage.Status.STOPPED,
}


@dataclass(kw_only=True)
class ConversationTurn:
    """One request in a saved conversation: the conversation (new and not saved yet, or loaded), the
    new messages as the client sent them, and how many saved messages the request leaves out."""

    conversation: Conversation
    new_messages: list[Any]
    model: str
    omitted: int = 0

    def save_request(self, *, usage: UsageLog | None) -> None:
        """Save a new conversation and the turn's user and tool messages, linked to the request's
        in-progress usage row (which tells a later turn that an answer is pending).

        Call it once the request is accepted; a conversation deleted since the turn opened gets nothing.
        """
        now = timezone.now()
        conversation = self.conversation
        with transaction.atomic():
            if conversation._state.adding:
                conversation.title = title_for(self.new_messages)
                conversation.model = self.model
                conversation.created_at = conversation.updated_at = now
                conversation.save(force_insert=True)
            elif Conversation.objects.filter(pk=conversation.pk).update(model=self.model, updated_at=now):
                conversation.model, conversation.updated_at = self.model, now
            else:
                return
            ConversationMessage.objects.bulk_create(
                ConversationMessage(
                    conversation=conversation,
                    role=message["role"],
                    content=message.get("content"),
                    tool_call_id=message.get("tool_call_id", "") if message["role"] == _Role.TOOL else "",
                    usage=usage,
                    created_at=now,
                )
                for message in self.new_messages
                if isinstance(message, dict) and message.get("role") in (_Role.USER, _Role.TOOL)
            )

    def save_answer(self, *, message: dict[str, Any] | None, usage: UsageLog) -> None:
        """Save the answer once (a second call for the same usage row adds nothing), as a
        chat-completions `choices[0].message` carries it, with its status from the settled usage
        row: completed → complete, cancelled → stopped (the partial text), anything else → failed."""
        message = message or {}
        now = timezone.now()
        with transaction.atomic():
            # The update comes first: it locks the conversation's row, so a concurrent second call
            # waits for this one and then finds its message.
            if not Conversation.objects.filter(pk=self.conversation.pk).update(updated_at=now):
                return
            self.conversation.updated_at = now
            if ConversationMessage.objects.filter(usage=usage, role=_Role.ASSISTANT).exists():
                return
            ConversationMessage.objects.create(
                conversation=self.conversation,
                role=_Role.ASSISTANT,
                content=message.get("content"),
                tool_calls=message.get("tool_calls") or None,
                status=_ANSWER_STATUSES.get(usage.status, ConversationMessage.Status.FAILED),
                usage=usage,
                created_at=now,
            )


def open_turn(*, user: AbstractBaseUser, data: dict[str, Any]) -> tuple[dict[str, Any], ConversationTurn | None]:
    """The request body with its saved history put before its new messages, and the turn to save;
    a body without `conversation` comes back as it was, with no turn.

    The history keeps within CHAT_MAX_MESSAGES, CHAT_MAX_INPUT_CHARS and CHAT_MAX_IMAGES by leaving
    out its oldest exchanges whole (a kept history starts at a user message, and an answer's tool
    calls stay with their results); the new messages are never left out, so if they alone are over
    the bounds the schema refuses them.
    """
    data = dict(data)
    reference = data.pop("conversation", None)
    if reference is None:
        return data, None
    if not app_settings.CHAT_SAVE_CONVERSATIONS:
        raise conversations_disabled()
    new_messages = data.get("messages")
    model = data.get("model")
    turn = ConversationTurn(
        conversation=_conversation_of_turn(user=user, reference=reference),
        new_messages=new_messages if isinstance(new_messages, list) else [],
        model=model if isinstance(model, str) else app_settings.CHAT_DEFAULT_MODEL,
    )
    if turn.conversation._state.adding or not isinstance(new_messages, list):
        return data, turn
    saved = list(turn.conversation.messages.all())
    if _answer_pending(saved):
        raise conversation_busy()
    history = _history(saved, new_messages)
    turn.omitted = _oldest_left_out(history, new_messages)
    return {**data, "messages": [*history[turn.omitted :], *new_messages]}, turn


def title_for(messages: Sequence[Any]) -> str:
    """The first user message's first line of text, cut at a word near TITLE_LENGTH characters."""
    first = next((m for m in messages if isinstance(m, dict) and m.get("role") == _Role.USER), None)
    text = " ".join(message_texts(first)) if first else ""
    line = next((" ".join(line.split()) for line in text.splitlines() if line.strip()), "")
    if len(line) <= TITLE_LENGTH:
        return line or UNTITLED
    cut = line[:TITLE_LENGTH]
    space = cut.rfind(" ")
    if space > TITLE_LENGTH // 2:
        cut = cut[:space]
    return cut.rstrip(" ,.;:") + "…"


def _conversation_of_turn(*, user: AbstractBaseUser, reference: object) -> Conversation:
    if reference == NEW_CONVERSATION:
        return Conversation(user_id=user.pk)
    if not isinstance(reference, str) or _parsed_id(reference) is None:
        raise invalid_request(
            "'conversation' must be \"new\" or the id of one of your conversations.", code="invalid_conversation"
        )
    return _owned(user=user, conversation_id=reference)


def _answer_pending(saved: Sequence[ConversationMessage]) -> bool:
    """Whether the conversation's latest request is still being answered (its usage row alive)."""
    if not saved or saved[-1].role == _Role.ASSISTANT or saved[-1].usage_id is None:
        return False
    return UsageLog.objects.filter(
        pk=saved[-1].usage_id,
        status=UsageLog.Status.IN_PROGRESS,
        last_seen_at__gte=timezone.now() - BUSY_WITHIN,
    ).exists()


def _history(saved: Sequence[ConversationMessage], new_messages: list[Any]) -> list[dict[str, Any]]:
    """The saved messages as the API takes them, with every kept tool call paired with its result.

    An answer keeps only the tool calls that the tool messages right after it answer (the new ones
    included): a stopped answer's half-streamed calls, or calls the user moved on from, would
    otherwise make the upstream refuse every later turn. An answer left with neither text nor
    calls is skipped (it failed before its first token), as is a tool message answering no kept call.
    """
    following: list[Any] = [*(_as_api_message(message) for message in saved), *new_messages]
    history: list[dict[str, Any]] = []
    open_calls: set[str] = set()
    for index, message in enumerate(following[: len(saved)]):
        if message["role"] == _Role.ASSISTANT:
            answered = {result.get("tool_call_id") for result in _tool_results_after(following, index)}
            calls = [call for call in message.get("tool_calls") or () if call.get("id") in answered]
            open_calls = {call["id"] for call in calls}
            if not message["content"] and not calls:
                continue
            answer: dict[str, Any] = {"role": _Role.ASSISTANT.value, "content": message["content"] or None}
            if calls:
                answer["tool_calls"] = calls
            history.append(answer)
        elif message["role"] == _Role.TOOL:
            if message["tool_call_id"] in open_calls and message["content"] is not None:
                history.append(message)
        else:
            open_calls = set()
            if message["content"] is not None:
                history.append(message)
    return history


def _tool_results_after(messages: list[Any], index: int) -> list[dict[str, Any]]:
    results = []
    for message in messages[index + 1 :]:
        if not isinstance(message, dict) or message.get("role") != _Role.TOOL:
            break
        results.append(message)
    return results


def _as_api_message(message: ConversationMessage) -> dict[str, Any]:
    if message.role == _Role.ASSISTANT:
        return {"role": message.role, "content": message.content, "tool_calls": message.tool_calls}
    if message.role == _Role.TOOL:
        return {"role": message.role, "tool_call_id": message.tool_call_id, "content": message.content}
    return {"role": message.role, "content": message.content}


def _oldest_left_out(history: list[dict[str, Any]], new_messages: list[Any]) -> int:
    """How many of the history's oldest messages to leave out so that it and the new messages keep
    within the request's bounds: the fewest at a cut that keeps exchanges whole, or, when none
    fits, the most (the schema then refuses what is still over)."""
    latest = len(history)
    if new_messages and _is_tool_message(new_messages[0]):
        # New tool results answer the history's last answer: it and its question stay.
        latest = next((i for i in range(len(history) - 1, -1, -1) if history[i]["role"] == _Role.ASSISTANT), latest)
    cuts = [i for i, message in enumerate(history[:latest]) if message["role"] == _Role.USER]
    if latest == len(history):
        cuts.append(latest)
    if not cuts:
        return 0
    messages_left = app_settings.CHAT_MAX_MESSAGES - len(new_messages)
    chars_left = app_settings.CHAT_MAX_INPUT_CHARS - sum(_text_length(message) for message in new_messages)
    images_left = app_settings.CHAT_MAX_IMAGES - sum(_image_count(message) for message in new_messages)
    # Totals of the history from each index to its end.
    chars, images = [0] * (len(history) + 1), [0] * (len(history) + 1)
    for index in range(len(history) - 1, -1, -1):
        chars[index] = chars[index + 1] + _text_length(history[index])
        images[index] = images[index + 1] + _image_count(history[index])
    for cut in cuts:
        if len(history) - cut <= messages_left and chars[cut] <= chars_left and images[cut] <= images_left:
            return cut
    return cuts[-1]


def _is_tool_message(message: object) -> bool:
    return isinstance(message, dict) and message.get("role") == _Role.TOOL


def _text_length(message: object) -> int:
    """Characters of text as the schema counts them; 0 for a malformed message, which it refuses anyway."""
    if not isinstance(message, dict):
        return 0
    try:
        return sum(len(text) for text in message_texts(message))
    except (AttributeError, KeyError, TypeError):
        return 0


def _image_count(message: object) -> int:
    if not isinstance(message, dict):
        return 0
    try:
        return sum(1 for _ in fields.image_parts(message, image_type="image_url"))
    except AttributeError:
        return 0


# --- Selectors and the owner's changes ---------------------------------------------------------


def conversations_for(*, user: AbstractBaseUser, limit: int = 100) -> list[dict[str, Any]]:
    """The user's conversations, the latest updated first."""
    rows = Conversation.objects.filter(user_id=user.pk).order_by("-updated_at", "-created_at")[:limit]
    return [_summary(conversation) for conversation in rows]


def conversation_detail(*, user: AbstractBaseUser, conversation_id: uuid.UUID | str) -> dict[str, Any]:
    """One of the user's conversations with its messages, each with its request's usage where linked."""
    conversation = _owned(user=user, conversation_id=conversation_id)
    messages = conversation.messages.select_related("usage")
    return {**_summary(conversation), "messages": [_message_detail(message) for message in messages]}


def rename_conversation(*, user: AbstractBaseUser, conversation_id: uuid.UUID | str, title: object) -> dict[str, Any]:
    conversation = _owned(user=user, conversation_id=conversation_id)
    if not isinstance(title, str) or not 1 <= len(title.strip()) <= Conversation.TITLE_MAX_LENGTH:
        raise invalid_request(
            f"'title' must be a string of 1 to {Conversation.TITLE_MAX_LENGTH} characters (spaces around it "
            "not counted).",
            code="invalid_title",
        )
    conversation.title = title.strip()
    conversation.save(update_fields=["title"])
    return _summary(conversation)


def delete_conversation(*, user: AbstractBaseUser, conversation_id: uuid.UUID | str) -> None:
    """Delete the conversation and its messages; the usage rows they link to stay, for billing."""
    parsed = _parsed_id(conversation_id)
    if parsed is None or not Conversation.objects.filter(pk=parsed, user_id=user.pk).delete()[0]:
        raise conversation_not_found()


def _owned(*, user: AbstractBaseUser, conversation_id: uuid.UUID | str) -> Conversation:
    parsed = _parsed_id(conversation_id)
    conversation = Conversation.objects.filter(pk=parsed, user_id=user.pk).first() if parsed else None
    if conversation is None:
        raise conversation_not_found()
    return conversation


def _parsed_id(conversation_id: uuid.UUID | str) -> uuid.UUID | None:
    if isinstance(conversation_id, uuid.UUID):
        return conversation_id
    try:
        return uuid.UUID(conversation_id)
    except ValueError:
        return None


def _summary(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "model": conversation.model,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def _message_detail(message: ConversationMessage) -> dict[str, Any]:
    usage = message.usage
    return {
        "id": message.pk,
        "role": message.role,
        "content": message.content,
        "tool_calls": message.tool_calls,
        "tool_call_id": message.tool_call_id or None,
        "status": message.status,
        "created_at": message.created_at.isoformat(),
        "usage": {"total_tokens": usage.total_tokens, "status": usage.status} if usage else None,
    }

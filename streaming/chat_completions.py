"""Chat completions through the relay core: the upstream call, and what its stream events mean."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.types.chat import ChatCompletionChunk

from .errors import ApiError, upstream_event_error
from .models import UsageLog
from .schemas.chat_completions import ChatCompletionRequest
from .usage import StreamAccount, reported_usage
from .wire import SSE_DONE


class ChatCompletionsApi:
    """`POST /chat/completions` with `stream: true`: chunks, a usage chunk, then `data: [DONE]`.

    The relay always asks the upstream for the usage chunk. With `usage_if_asked` the client gets it
    only if it asked (`stream_options.include_usage`), as from OpenAI; the page's API always sends it.
    """

    endpoint = UsageLog.Endpoint.CHAT_COMPLETIONS
    sse_terminator = SSE_DONE
    path = "/chat/completions"

    def __init__(self, *, usage_if_asked: bool) -> None:
        self.usage_if_asked = usage_if_asked

    def request_body(self, params: dict[str, Any]) -> dict[str, Any]:
        """The validated parameters as they are (past the SDK's typed-parameter transform, about 0.25 ms
        a message here, whose types also lag behind the API), streamed, always asking for the usage
        chunk (to account for it)."""
        return {**params, "stream": True, "stream_options": {**params.get("stream_options", {}), "include_usage": True}}

    def observe(self, event: str | None, payload: dict[str, Any], account: StreamAccount) -> ApiError | None:
        """Account for one chunk; the error it carries, if it is an error event."""
        if event == "error" or payload.get("error") or payload.get("object") == "error":
            return upstream_event_error(payload)
        usage = payload.get("usage")
        if usage:
            account.usage = reported_usage(usage, prompt="prompt_tokens", completion="completion_tokens")
        if not account.response_id and isinstance(payload.get("id"), str):
            account.response_id = payload["id"]
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") or {}
            # One kind of text a delta: the answer, a refusal, or reasoning (vLLM and others name it either way).
            text = (
                delta.get("content") or delta.get("refusal") or delta.get("reasoning_content") or delta.get("reasoning")
            )
            if text:
                account.output(text)
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                _account_tool_calls(_index(choice), tool_calls, account)
            finish_reason = choice.get("finish_reason")
            if finish_reason:
                account.finish(str(finish_reason), choice=_index(choice))
        return None

    def error_event(self, error: ApiError, account: StreamAccount) -> dict[str, Any]:
        """A failure after the stream began: one `{"error": {...}}` object, which both SDKs raise."""
        return error.as_dict()

    def forwards(self, payload: dict[str, Any], request: ChatCompletionRequest) -> bool:
        if not self.usage_if_asked or payload.get("choices") or not payload.get("usage"):
            return True
        return request.include_usage


def assemble_chat_completion(chunks: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The `chat.completion` object that a stream of chunks adds up to (what `stream: false` returns).

    The openai SDK's own accumulator joins content, refusals, tool-call arguments and logprobs by
    choice and index; the fields it adds for its parse helpers are left out.
    """
    state = ChatCompletionStreamState()
    for chunk in chunks:
        state.handle_chunk(ChatCompletionChunk.construct(**chunk))
    completion = state.get_final_completion().model_dump(mode="json", exclude_unset=True)
    for choice in completion.get("choices") or ():
        message = choice.get("message") or {}
        message.pop("parsed", None)
        for call in message.get("tool_calls") or ():
            call.pop("index", None)
            (call.get("function") or {}).pop("parsed_arguments", None)
    return completion


@dataclass
class AnswerTranscript:
    """A saved conversation's part in the relay: the answer's chunks as they pass, assembled into
    its `choices[0].message` once the request is settled, then handed to `save` (with the row)."""

    save: Callable[..., None]
    events: list[dict[str, Any]] = field(default_factory=list)

    def save_answer(self, *, row: UsageLog) -> None:
        choices = assemble_chat_completion(self.events).get("choices") if self.events else None
        self.save(message=choices[0].get("message") if choices else None, usage=row)


# The page's API, and OpenAI's own (`/v1`).
CHAT_COMPLETIONS = ChatCompletionsApi(usage_if_asked=False)
OPENAI_CHAT_COMPLETIONS = ChatCompletionsApi(usage_if_asked=True)


def _account_tool_calls(choice: int, tool_calls: object, account: StreamAccount) -> None:
    """Count each call (by its index in the choice) and its generated name and arguments."""
    if not isinstance(tool_calls, list):
        return
    for call in tool_calls:
        if not isinstance(call, dict):
            continue
        account.tool_call((choice, _index(call)))
        function = call.get("function")
        if isinstance(function, dict):
            for text in (function.get("name"), function.get("arguments")):
                if isinstance(text, str) and text:
                    account.output(text)


def _index(item: dict[str, Any]) -> int:
    """A choice's or tool call's `index` (0 where the upstream left it out)."""
    index = item.get("index")
    return index if isinstance(index, int) else 0

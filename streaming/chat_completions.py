"""Chat completions through the relay core: the upstream call, and what its stream events mean."""

from __future__ import annotations

from typing import Any

import openai
from openai import AsyncOpenAI
from openai._response import AsyncAPIResponse, AsyncResponseContextManager

from .errors import ApiError, upstream_error
from .usage import ReportedUsage, StreamAccount
from .wire import SSE_DONE


class ChatCompletionsApi:
    """`POST /chat/completions` with `stream: true`: chunks, a usage chunk, then `data: [DONE]`."""

    sse_terminator = SSE_DONE

    def open(self, client: AsyncOpenAI, params: dict[str, Any]) -> AsyncResponseContextManager[AsyncAPIResponse]:
        """The SDK's raw streaming request; the SDK keeps authentication, retries and HTTP errors."""
        # The SDK walks every message of typed params to transform them (about 0.25 ms a message here);
        # these are validated plain dicts already, so they travel untouched in the body.
        messages = params.pop("messages")
        return client.chat.completions.with_streaming_response.create(
            **params,
            messages=[],
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"messages": messages},
            # Compressing small SSE events costs both sides CPU and buys nothing.
            extra_headers={"Accept-Encoding": "identity"},
        )

    def observe(self, event: str | None, payload: dict[str, Any], account: StreamAccount) -> ApiError | None:
        """Account for one chunk; the error it carries, if it is an error event."""
        if event == "error" or payload.get("error") or payload.get("object") == "error":
            return upstream_error(_stream_error(payload))
        usage = payload.get("usage")
        if usage:
            account.usage = _reported_usage(usage)
        if not account.request_id and isinstance(payload.get("id"), str):
            account.request_id = payload["id"]
        for choice in payload.get("choices") or ():
            delta = choice.get("delta") or {}
            text = delta.get("content") or delta.get("reasoning_content")
            if text:
                account.output(text)
            if choice.get("finish_reason"):
                account.finished = True
        return None

    def error_event(self, error: ApiError) -> dict[str, Any]:
        """A failure after the stream began: one `{"error": {...}}` object, which both SDKs raise."""
        return error.as_dict()


CHAT_COMPLETIONS = ChatCompletionsApi()


def _reported_usage(usage: dict[str, Any]) -> ReportedUsage | None:
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if not (isinstance(prompt, int) and isinstance(completion, int)):
        return None
    return ReportedUsage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=usage.get("total_tokens") or prompt + completion,
    )


def _stream_error(payload: dict[str, Any]) -> openai.APIError:
    inner = payload.get("error")
    error: dict[str, Any] = inner if isinstance(inner, dict) else payload
    message = error.get("message") if isinstance(error.get("message"), str) else "The upstream reported an error."
    return openai.APIError(message, request=None, body={"error": error})  # type: ignore[arg-type]

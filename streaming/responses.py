"""The Responses API through the relay core: the upstream call, and what its stream events mean.

A Responses stream is typed events (`response.created` … `response.output_text.delta` …
`response.completed`), each an SSE `event: <type>` + `data: <json>` with a `sequence_number`, and no
end marker: the last lifecycle event (`response.completed`, `.incomplete` or `.failed`) carries the
whole response, usage included. The client gets every event as the upstream sent it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .errors import ApiError, redact_secrets, upstream_event_error, upstream_incomplete
from .models import UsageLog
from .usage import StreamAccount, reported_usage

# Events whose `delta` is generated text: the answer, a refusal, a function call's arguments, reasoning.
TEXT_DELTAS = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.custom_tool_call_input.delta",
        "response.reasoning_text.delta",
        "response.reasoning_summary_text.delta",
    }
)
# The events that end a response, each carrying it whole.
FINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")
FAILED_MESSAGE = "The upstream model failed to answer."


class ResponsesApi:
    """`POST /responses` with `stream: true`."""

    endpoint = UsageLog.Endpoint.RESPONSES
    sse_terminator = b""
    path = "/responses"

    def request_body(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "stream": True}

    def observe(self, event: str | None, payload: dict[str, Any], account: StreamAccount) -> ApiError | None:
        """Account for one event; an `error` event ends the stream with the relay's own error event.

        A `response.failed` is the answer's end, relayed as it came; the row records the failure."""
        kind = payload.get("type", event)
        if kind == "error" or event == "error":
            return upstream_event_error(payload)
        if kind in TEXT_DELTAS:
            delta = payload.get("delta")
            if isinstance(delta, str) and delta:
                account.output(delta)
        elif kind == "response.output_item.added":
            _account_item(payload, account)
        elif isinstance(kind, str) and kind.startswith("response.") and isinstance(payload.get("response"), dict):
            _account_response(kind, payload["response"], account)
        return None

    def error_event(self, error: ApiError, account: StreamAccount) -> dict[str, Any]:
        """A failure after the stream began, as a Responses `error` event (which both SDKs raise)."""
        return {
            "type": "error",
            "code": error.code,
            "message": error.message,
            "param": None,
            "sequence_number": account.events,
        }

    def forwards(self, payload: dict[str, Any], request: object) -> bool:
        return True


RESPONSES = ResponsesApi()


def assemble_response(events: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The `response` object a stream of events ends with (what `stream: false` returns).

    Its `output` is the final event's, or, where the upstream left that empty, the items the stream
    finished (`response.output_item.done`), in output order. A failed response is its error
    (502 `upstream_stream_error`, which the SDKs raise), as a failed chat completion is.
    """
    final: dict[str, Any] | None = None
    items: dict[int, dict[str, Any]] = {}
    for event in events:
        kind = event.get("type")
        if kind == "response.output_item.done" and isinstance(event.get("item"), dict):
            items[_output_index(event)] = event["item"]
        elif kind in FINAL_EVENTS and isinstance(event.get("response"), dict):
            final = event["response"]
    if final is None:
        raise upstream_incomplete()
    if final.get("status") == "failed":
        error = final.get("error")
        raise upstream_event_error({"error": error if isinstance(error, dict) else {"message": FAILED_MESSAGE}})
    if not final.get("output") and items:
        final = {**final, "output": [items[index] for index in sorted(items)]}
    return final


def _account_item(payload: dict[str, Any], account: StreamAccount) -> None:
    """A new output item: a tool call (`function_call`, `web_search_call`, …) counts, and its name."""
    item = payload.get("item")
    if not isinstance(item, dict) or not str(item.get("type", "")).endswith("_call"):
        return
    account.tool_call((0, _output_index(payload)))
    if isinstance(item.get("name"), str) and item["name"]:
        account.output(item["name"])


def _account_response(kind: str, response: dict[str, Any], account: StreamAccount) -> None:
    """A lifecycle event: the response's id, and at its end, usage and how it ended."""
    if not account.response_id and isinstance(response.get("id"), str):
        account.response_id = response["id"]
    if kind not in FINAL_EVENTS:
        return
    usage = response.get("usage")
    if isinstance(usage, dict):
        account.usage = reported_usage(usage, prompt="input_tokens", completion="output_tokens")
    if kind == "response.completed":
        account.finish("completed")
    elif kind == "response.incomplete":
        details = response.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        account.finish(reason if isinstance(reason, str) and reason else "incomplete")
    else:
        error = response.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        account.fail(redact_secrets(message) if isinstance(message, str) and message else FAILED_MESSAGE)
        account.finish("failed")


def _output_index(event: dict[str, Any]) -> int:
    index = event.get("output_index")
    return index if isinstance(index, int) else 0

"""OpenAI's own API at `/v1`, for SDKs, scripts and tools, authenticated by personal API keys.

The same request schemas, relay, limits and usage rows as the page's API; only the front (a bearer
key instead of the session) and the answer's shape (OpenAI's SSE, or one `chat.completion` or
`response` object) differ.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from .api_keys import note_key_used
from .chat_completions import OPENAI_CHAT_COMPLETIONS, assemble_chat_completion
from .conf import app_settings
from .database import in_database_thread
from .errors import ApiError, error_response, model_not_found, not_found
from .fronts import bearer_key_front
from .relay import UpstreamApi
from .responses import RESPONSES, assemble_response
from .schemas.chat_completions import parse_chat_completion_request
from .schemas.fields import Body
from .schemas.responses import parse_responses_request
from .views import StreamedRequest, accept_and_open, method_not_allowed_response, streaming_response
from .wire import Framing, NDJSONFraming, SSEFraming

# Models have no creation date here; OpenAI's list shape needs one.
MODEL_CREATED = 0
MODEL_OWNER = "chatproxy"


def _framing(request: StreamedRequest) -> Framing:
    """OpenAI's SSE for a stream; one event a line, to add up, for a single object."""
    return SSEFraming if request.stream else NDJSONFraming


@csrf_exempt  # bearer keys only: no cookie is read, so there is nothing to forge
async def chat_completions(request: HttpRequest) -> HttpResponseBase:
    """`POST /v1/chat/completions`: a stream of chunks (`stream: true`) or one `chat.completion`."""
    return await _relay(
        request,
        parse=partial(parse_chat_completion_request, stream_default=False),
        api=OPENAI_CHAT_COMPLETIONS,
        assemble=assemble_chat_completion,
    )


@csrf_exempt
async def responses(request: HttpRequest) -> HttpResponseBase:
    """`POST /v1/responses`: a stream of Responses events (`stream: true`) or one `response`."""
    return await _relay(
        request,
        parse=partial(parse_responses_request, stream_default=False),
        api=RESPONSES,
        assemble=assemble_response,
    )


async def _relay(
    request: HttpRequest,
    *,
    parse: Callable[[Body], StreamedRequest],
    api: UpstreamApi,
    assemble: Callable[[list[dict[str, Any]]], dict[str, Any]],
) -> HttpResponseBase:
    """The bearer front's request: OpenAI's SSE, or the stream's events assembled into one object."""
    if request.method != "POST":
        return method_not_allowed_response("POST")
    opened = await accept_and_open(request, front=bearer_key_front, parse=parse, api=api, framing=_framing)
    if isinstance(opened, ApiError):
        return error_response(opened)
    accepted, stream = opened.request, opened.stream
    if accepted.stream:
        return streaming_response(stream, opened.timings)
    try:
        response: HttpResponse = JsonResponse(assemble(await stream.collect()))
    except ApiError as error:  # recorded with its usage row
        response = error_response(error)
    response["Server-Timing"] = opened.timings.server_timing()
    return response


def _model(model_id: str) -> dict[str, object]:
    return {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": MODEL_OWNER}


@csrf_exempt
async def models(request: HttpRequest) -> HttpResponseBase:
    """`GET /v1/models`: the models the key's user may ask for."""
    refusal = await _key_refusal(request)
    if refusal is not None:
        return refusal
    return JsonResponse({"object": "list", "data": [_model(name) for name in app_settings.CHAT_ALLOWED_MODELS]})


@csrf_exempt
async def model(request: HttpRequest, model_id: str) -> HttpResponseBase:
    """`GET /v1/models/{model}`: one of them, or 404."""
    refusal = await _key_refusal(request)
    if refusal is not None:
        return refusal
    if model_id not in app_settings.CHAT_ALLOWED_MODELS:
        return error_response(model_not_found(model=model_id))
    return JsonResponse(_model(model_id))


@csrf_exempt
async def unknown_endpoint(request: HttpRequest, path: str = "") -> HttpResponseBase:
    """Any other `/v1` path: OpenAI's 404 (the SDKs' NotFoundError), whatever the site's 404 page."""
    return error_response(not_found(path=request.path))


async def _key_refusal(request: HttpRequest) -> HttpResponse | None:
    """The response refusing a GET endpoint's request, or None (and the key's use noted)."""
    if request.method != "GET":
        return method_not_allowed_response("GET")
    try:
        await in_database_thread(_note_key_use, request)
    except ApiError as error:
        return error_response(error)
    return None


def _note_key_use(request: HttpRequest) -> None:
    caller = bearer_key_front(request)
    assert caller.api_key is not None
    note_key_used(caller.api_key)

"""`POST /api/markdown`: the chat page's answers rendered as safe HTML (`streaming.markdown`).

The page sends the text of an answer as it streams (about every 150 ms, one request at a time) and
the saved answers of a conversation in one batch on load. Only a logged-in user of the page may
ask (the session front: 401 when logged out, CSRF checked), and a request is bounded: parsing is
pure Python work on this server, so its size is held to what one request's input and answer can be.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from .conf import app_settings
from .errors import ApiError, error_response, input_too_long, invalid_request, too_many
from .fronts import request_body, session_front
from .markdown import render_markdown
from .schemas.fields import load_body
from .views import method_not_allowed_response

MAX_TEXTS = 200
# Characters of answer text a completion token stands for, at most (for the bound on a batch).
CHARS_PER_TOKEN = 8


def max_batch_chars() -> int:
    """A batch's characters, at most: a conversation's input and one answer."""
    return app_settings.CHAT_MAX_INPUT_CHARS + app_settings.CHAT_MAX_TOKENS * CHARS_PER_TOKEN


@csrf_exempt  # the session front checks CSRF itself, after authentication
@never_cache
def render(request: HttpRequest) -> HttpResponse:
    """POST `{"texts": [str, ...]}` → `{"html": [str, ...]}`, the HTML of each text in order."""
    if request.method != "POST":
        return method_not_allowed_response("POST")
    try:
        session_front(request)
        texts = _texts(load_body(request_body(request)))
    except ApiError as error:
        return error_response(error)
    return JsonResponse({"html": [render_markdown(text) for text in texts]})


def _texts(data: dict[str, Any]) -> list[str]:
    unknown = sorted(name for name in data if name != "texts")
    if unknown:
        raise invalid_request(
            f"Unknown field(s): {', '.join(repr(name) for name in unknown)}. Allowed fields: texts.",
            code="unknown_field",
        )
    texts = data.get("texts")
    if not isinstance(texts, list):
        raise invalid_request("'texts' must be a list of strings.", code="invalid_texts")
    if len(texts) > MAX_TEXTS:
        raise too_many(field="texts", count=len(texts), limit=MAX_TEXTS, code="too_many_texts", what="texts")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise invalid_request(f"'texts[{index}]' must be a string.", code="invalid_texts")
    size, limit = sum(len(text) for text in texts), max_batch_chars()
    if size > limit:
        raise input_too_long(field="texts", size=size, limit=limit)
    return texts

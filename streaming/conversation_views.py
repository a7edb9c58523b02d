"""The chat page and its saved conversations' API: list, read, rename and delete one's own.

The API views answer through the session front (401 JSON when logged out, CSRF checked on every
write) and in the API's error shape; someone else's conversation is a 404, as a missing one is.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render, resolve_url
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from .conf import app_settings
from .conversations import (
    conversation_detail,
    conversations_for,
    delete_conversation,
    rename_conversation,
)
from .errors import ApiError, error_response, invalid_request
from .fronts import request_body, session_front
from .key_views import signed_in_user
from .schemas.fields import load_body
from .views import method_not_allowed_response

RENAME_FIELDS = ("title",)


@never_cache
@login_required
def chat_page(request: HttpRequest, conversation_id: uuid.UUID | None = None) -> HttpResponse:
    """The chat page, on a new chat or on one of the user's saved conversations (else a 404 page)."""
    user = signed_in_user(request)
    conversation = None
    if conversation_id is not None:
        try:
            conversation = conversation_detail(user=user, conversation_id=conversation_id)
        except ApiError as error:
            raise Http404(error.message) from None
    context = {
        "demo_mode": app_settings.CHAT_DEMO_MODE,
        "models": app_settings.CHAT_ALLOWED_MODELS,
        "default_model": app_settings.CHAT_DEFAULT_MODEL,
        "login_url": resolve_url(settings.LOGIN_URL),
        "conversation": conversation,
        "conversations": conversations_for(user=user),
        "save_conversations": app_settings.CHAT_SAVE_CONVERSATIONS,
        "max_images": app_settings.CHAT_MAX_IMAGES,
        "max_image_url_bytes": app_settings.CHAT_MAX_IMAGE_URL_BYTES,
    }
    return render(request, "streaming/chat.html", context)


@csrf_exempt  # the session front checks CSRF itself, after authentication
@never_cache
def conversations(request: HttpRequest) -> HttpResponse:
    """GET: the user's conversations, the latest updated first."""
    if request.method != "GET":
        return method_not_allowed_response("GET")
    try:
        caller = session_front(request)
    except ApiError as error:
        return error_response(error)
    return JsonResponse({"object": "list", "data": conversations_for(user=caller.user)})


@csrf_exempt
@never_cache
def conversation(request: HttpRequest, conversation_id: uuid.UUID) -> HttpResponse:
    """GET: the conversation with its messages; PATCH `{"title"}`: rename it; DELETE: delete it (204)."""
    if request.method not in ("GET", "PATCH", "DELETE"):
        return method_not_allowed_response("GET, PATCH, DELETE")
    try:
        user = session_front(request).user
        if request.method == "PATCH":
            changes = _rename_body(request)
            return JsonResponse(
                rename_conversation(user=user, conversation_id=conversation_id, title=changes.get("title"))
            )
        if request.method == "DELETE":
            delete_conversation(user=user, conversation_id=conversation_id)
            return HttpResponse(status=204)
        return JsonResponse(conversation_detail(user=user, conversation_id=conversation_id))
    except ApiError as error:
        return error_response(error)


def _rename_body(request: HttpRequest) -> dict[str, Any]:
    changes = load_body(request_body(request))
    unknown = sorted(name for name in changes if name not in RENAME_FIELDS)
    if unknown:
        raise invalid_request(
            f"Unknown field(s): {', '.join(repr(name) for name in unknown)}. Allowed fields: title.",
            code="unknown_field",
        )
    return changes

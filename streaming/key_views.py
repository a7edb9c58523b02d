"""The logged-in user's page of personal API keys: list, create (the full key shown once), revoke."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.base_user import AbstractBaseUser
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_http_methods, require_POST

from .api_keys import create_api_key, expiry_in, key_state, keys_of, may_use_api_keys, revoke_api_key
from .conf import app_settings
from .forms import ApiKeyForm


def signed_in_user(request: HttpRequest) -> AbstractBaseUser:
    """The user `login_required` let in (which the type checker cannot know)."""
    user = request.user
    if not user.is_authenticated:
        raise PermissionDenied
    return user


@never_cache  # the response to a create holds the full key: no cache may keep it
@login_required
@require_http_methods(["GET", "POST"])
def api_keys_page(request: HttpRequest) -> HttpResponse:
    user = signed_in_user(request)
    permitted = may_use_api_keys(user)
    form = ApiKeyForm()
    full_key = None
    if request.method == "POST":
        if not permitted:
            raise PermissionDenied
        form = ApiKeyForm(request.POST)
        if form.is_valid():
            try:
                full_key = create_api_key(
                    user=user,
                    name=form.cleaned_data["name"],
                    expires_at=expiry_in(form.cleaned_data["expires_days"]),
                )[1]
            except ValidationError as error:
                form.add_error(None, error)
            else:
                form = ApiKeyForm()
    context = page_context(request, user=user, form=form, full_key=full_key, may_create=permitted)
    return render(request, "streaming/api_keys.html", context)


def page_context(
    request: HttpRequest, *, user: AbstractBaseUser, form: ApiKeyForm, full_key: str | None, may_create: bool
) -> dict[str, Any]:
    now = timezone.now()
    return {
        "keys": [(key, key_state(key, now=now)) for key in keys_of(user=user)],
        "form": form,
        "full_key": full_key,
        "may_create": may_create,
        "max_keys": app_settings.CHAT_MAX_API_KEYS_PER_USER,
        "base_url": v1_base_url(request),
        "default_model": app_settings.CHAT_DEFAULT_MODEL,
    }


def v1_base_url(request: HttpRequest) -> str:
    """The absolute URL SDKs take as `base_url`, wherever the site mounts the app."""
    return request.build_absolute_uri(reverse("streaming:v1-models")).removesuffix("/models")


@login_required
@require_POST
def revoke_key(request: HttpRequest, pk: int) -> HttpResponseRedirect:
    key = get_object_or_404(keys_of(user=signed_in_user(request)), pk=pk)
    revoke_api_key(key)
    messages.success(request, f"Revoked {key.name} ({key.public_id}): it no longer works.", fail_silently=True)
    return redirect("streaming:api-keys")

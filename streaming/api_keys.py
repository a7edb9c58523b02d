"""Personal API keys: making one, finding the key a request presents, and noting its use.

A key is `chp_<prefix>_<secret>`. The prefix (8 hex digits) is public and unique: it finds the
row with one indexed lookup. The secret (32 random bytes, URL-safe base64) is stored only as
`sha256$<salt>$<hex digest of salt + secret>`, compared in constant time. A fast hash is right for
a 256-bit random secret (there is nothing to brute-force); the salt keeps equal digests apart.

Keys are looked up on every request, not cached: revoking one takes effect on the next request.

A user holds at most CHAT_MAX_API_KEYS_PER_USER live keys (neither revoked nor expired); revoked
and expired keys stay listed, for the record, but do not count.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta

from django.contrib.auth import get_user_model
from django.contrib.auth.base_user import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from .conf import app_settings
from .errors import api_key_invalid, api_key_not_permitted, api_key_refused
from .models import ApiKey

KEY_PREFIX = "chp_"
KEY_PATTERN = re.compile(r"chp_([0-9a-f]{8})_([A-Za-z0-9_-]{43})")
SECRET_BYTES = 32
# last_used_at is written when it is older than this (so at most about once a minute per key).
LAST_USED_RESOLUTION = timedelta(seconds=60)
USE_PERMISSION = "streaming.use_api_keys"
_PREFIX_ATTEMPTS = 5


def hash_secret(secret: str, *, salt: str | None = None) -> str:
    salt = salt if salt is not None else secrets.token_hex(16)
    digest = hashlib.sha256((salt + secret).encode()).hexdigest()
    return f"sha256${salt}${digest}"


def secret_matches(secret: str, secret_hash: str) -> bool:
    algorithm, _, rest = secret_hash.partition("$")
    salt, _, _ = rest.partition("$")
    return algorithm == "sha256" and hmac.compare_digest(hash_secret(secret, salt=salt), secret_hash)


def may_use_api_keys(user: AbstractBaseUser) -> bool:
    """Every active user, unless CHAT_API_KEYS_REQUIRE_PERMISSION reserves keys to holders of `use_api_keys`."""
    if not user.is_active:
        return False
    return not app_settings.CHAT_API_KEYS_REQUIRE_PERMISSION or _has_use_permission(user)


def _has_use_permission(user: AbstractBaseUser) -> bool:
    """`has_perm` comes with PermissionsMixin, which a custom user model may lack (then: no permission)."""
    has_perm = getattr(user, "has_perm", None)
    return bool(has_perm and has_perm(USE_PERMISSION))


class KeyState(models.TextChoices):
    ACTIVE = "active", "active"
    EXPIRED = "expired", "expired"
    REVOKED = "revoked", "revoked"


def key_state(key: ApiKey, *, now: datetime | None = None) -> KeyState:
    """Revoked comes first: a revoked key stays revoked once its expiry passes."""
    if key.is_revoked:
        return KeyState.REVOKED
    if key.is_expired(now):
        return KeyState.EXPIRED
    return KeyState.ACTIVE


def keys_in_state(keys: QuerySet[ApiKey], *, state: KeyState, now: datetime | None = None) -> QuerySet[ApiKey]:
    now = now or timezone.now()
    expired = Q(expires_at__isnull=False, expires_at__lte=now)
    if state == KeyState.REVOKED:
        return keys.filter(revoked_at__isnull=False)
    if state == KeyState.EXPIRED:
        return keys.filter(expired, revoked_at__isnull=True)
    return keys.filter(revoked_at__isnull=True).exclude(expired)


def keys_of(*, user: AbstractBaseUser) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(user_id=user.pk).order_by("-created_at", "-pk")


def live_key_count(*, user: AbstractBaseUser, now: datetime | None = None) -> int:
    return keys_in_state(keys_of(user=user), state=KeyState.ACTIVE, now=now).count()


def check_room_for_key(*, user: AbstractBaseUser) -> None:
    """Raise a ValidationError when `user` already holds the most live keys the site allows."""
    limit = app_settings.CHAT_MAX_API_KEYS_PER_USER
    if live_key_count(user=user) >= limit:
        raise ValidationError(
            "You already have the most active API keys this site allows (%(limit)d). Revoke one to create another.",
            code="too_many_api_keys",
            params={"limit": limit},
        )


def create_api_key(*, user: AbstractBaseUser, name: str, expires_at: datetime | None = None) -> tuple[ApiKey, str]:
    """A new key for `user` and the full key, which exists nowhere else: show it once.

    Raises a ValidationError (code `too_many_api_keys`) past CHAT_MAX_API_KEYS_PER_USER live keys.
    The count and the insert are one transaction holding the user's row (on PostgreSQL), so two
    creates at once cannot both take the last place.
    """
    secret = secrets.token_urlsafe(SECRET_BYTES)
    with transaction.atomic():
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk"))
        check_room_for_key(user=user)
        for attempt in range(_PREFIX_ATTEMPTS):
            key = ApiKey(user_id=user.pk, name=name, prefix=secrets.token_hex(4), secret_hash=hash_secret(secret))
            key.expires_at = expires_at
            try:
                with transaction.atomic():
                    key.save(force_insert=True)
            except IntegrityError:  # a prefix already taken (one in 4 billion a key)
                if attempt == _PREFIX_ATTEMPTS - 1:
                    raise
                continue
            return key, f"{KEY_PREFIX}{key.prefix}_{secret}"
    raise AssertionError("unreachable")


def expiry_in(days: int | None) -> datetime | None:
    return timezone.now() + timedelta(days=days) if days else None


def revoke_api_keys(*, keys: QuerySet[ApiKey]) -> int:
    """Revoke the ones among `keys` not revoked yet; how many that was."""
    return keys.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())


def revoke_api_key(key: ApiKey) -> None:
    revoke_api_keys(keys=ApiKey.objects.filter(pk=key.pk))
    key.refresh_from_db(fields=["revoked_at"])


def authenticate_api_key(presented: str) -> ApiKey:
    """The live key `presented` is (with its user), or the 401/403 ApiError refusing it."""
    match = KEY_PATTERN.fullmatch(presented)
    if match is None:
        raise api_key_invalid()
    prefix, secret = match.groups()
    key = ApiKey.objects.select_related("user").filter(prefix=prefix).first()
    if key is None or not secret_matches(secret, key.secret_hash):
        raise api_key_invalid()
    if key.is_revoked:
        raise api_key_refused(reason="This API key was revoked.", code="api_key_revoked")
    if key.is_expired():
        raise api_key_refused(reason="This API key has expired.", code="api_key_expired")
    if not key.user.is_active:
        raise api_key_refused(reason="This API key's account is inactive.", code="account_inactive")
    if app_settings.CHAT_API_KEYS_REQUIRE_PERMISSION and not _has_use_permission(key.user):
        raise api_key_not_permitted()
    return key


def note_key_used(key: ApiKey, *, now: datetime | None = None) -> None:
    """Record that the key was used, unless that was recorded less than a minute ago."""
    now = now or timezone.now()
    if key.last_used_at is None or now - key.last_used_at >= LAST_USED_RESOLUTION:
        key.last_used_at = now
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=now)

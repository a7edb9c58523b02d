"""Personal API keys as a service: made once, stored only as a salted hash, refused for every reason that applies."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.utils import timezone

from streaming.api_keys import (
    LAST_USED_RESOLUTION,
    KeyState,
    authenticate_api_key,
    create_api_key,
    expiry_in,
    hash_secret,
    key_state,
    keys_of,
    live_key_count,
    note_key_used,
    revoke_api_key,
    revoke_api_keys,
)
from streaming.errors import ApiError
from streaming.models import ApiKey
from tests.live_site import PASSWORD


@pytest.fixture
def alice(db, django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


def refusal(presented: str) -> tuple[int, str | None]:
    with pytest.raises(ApiError) as refused:
        authenticate_api_key(presented)
    return refused.value.status, refused.value.code


def test_a_new_key_authenticates_as_its_owner(alice):
    key, full_key = create_api_key(user=alice, name="laptop")
    assert full_key.startswith(f"{key.public_id}_") and len(full_key) == len("chp_") + 8 + 1 + 43
    authenticated = authenticate_api_key(full_key)
    assert authenticated.pk == key.pk and authenticated.user == alice


def test_the_secret_is_stored_only_as_a_salted_hash(alice):
    first, first_key = create_api_key(user=alice, name="one")
    second, second_key = create_api_key(user=alice, name="two")
    for key, full_key in ((first, first_key), (second, second_key)):
        secret = full_key.removeprefix(f"{key.public_id}_")
        row = ApiKey.objects.filter(pk=key.pk).values().get()
        assert not any(secret in str(value) for value in row.values())
        assert full_key not in str(row)
    algorithm, first_salt, first_digest = first.secret_hash.split("$")
    _, second_salt, second_digest = second.secret_hash.split("$")
    assert algorithm == "sha256" and first_salt != second_salt and first_digest != second_digest


def test_the_same_secret_under_two_salts_hashes_differently(alice):
    assert hash_secret("the same secret") != hash_secret("the same secret")


def test_a_wrong_secret_with_a_real_prefix_is_refused(alice):
    key, full_key = create_api_key(user=alice, name="laptop")
    forged = f"{key.public_id}_{'A' * 43}"
    assert forged != full_key
    assert refusal(forged) == (401, "invalid_api_key")


@pytest.mark.parametrize(
    "presented",
    ["", "chp_", "sk-not-one-of-ours", "chp_1234567_" + "A" * 43, "chp_ABCDEF12_" + "A" * 43, "chp_12345678_short"],
)
def test_a_malformed_key_is_refused(alice, presented):
    create_api_key(user=alice, name="laptop")
    assert refusal(presented) == (401, "invalid_api_key")


def test_an_unknown_prefix_is_refused(alice):
    key, full_key = create_api_key(user=alice, name="laptop")
    other_prefix = "0" * 8 if key.prefix != "0" * 8 else "1" * 8
    assert refusal(full_key.replace(key.prefix, other_prefix, 1)) == (401, "invalid_api_key")


def test_a_revoked_key_is_refused(alice):
    key, full_key = create_api_key(user=alice, name="laptop")
    revoke_api_key(key)
    assert refusal(full_key) == (401, "api_key_revoked")


def test_an_expired_key_is_refused(alice):
    full_key = create_api_key(user=alice, name="old", expires_at=timezone.now() - timedelta(seconds=1))[1]
    assert refusal(full_key) == (401, "api_key_expired")


def test_a_key_expiring_in_days_works_until_then(alice):
    key, full_key = create_api_key(user=alice, name="week", expires_at=expiry_in(7))
    assert key.expires_at - timezone.now() > timedelta(days=7) - timedelta(minutes=1)
    assert authenticate_api_key(full_key).pk == key.pk
    assert expiry_in(None) is None


def test_an_inactive_users_key_is_refused(alice):
    full_key = create_api_key(user=alice, name="laptop")[1]
    alice.is_active = False
    alice.save()
    assert refusal(full_key) == (401, "account_inactive")


def test_with_the_permission_required_only_holders_keys_work(alice, settings):
    full_key = create_api_key(user=alice, name="laptop")[1]
    settings.CHAT_API_KEYS_REQUIRE_PERMISSION = True
    assert refusal(full_key) == (403, "api_keys_not_permitted")
    alice.user_permissions.add(Permission.objects.get(codename="use_api_keys"))
    alice = type(alice).objects.get(pk=alice.pk)
    assert authenticate_api_key(full_key).user == alice


def test_last_use_is_written_at_most_once_a_minute(alice, django_assert_num_queries):
    key = create_api_key(user=alice, name="laptop")[0]
    first = timezone.now()
    with django_assert_num_queries(1):
        note_key_used(key, now=first)
    with django_assert_num_queries(0):
        note_key_used(key, now=first + LAST_USED_RESOLUTION - timedelta(seconds=1))
    assert ApiKey.objects.get(pk=key.pk).last_used_at == first
    later = first + LAST_USED_RESOLUTION
    with django_assert_num_queries(1):
        note_key_used(key, now=later)
    assert ApiKey.objects.get(pk=key.pk).last_used_at == later


def test_states_and_the_live_count_leave_out_revoked_and_expired_keys(alice, django_user_model):
    active = create_api_key(user=alice, name="active")[0]
    expired = create_api_key(user=alice, name="expired", expires_at=timezone.now() - timedelta(seconds=1))[0]
    revoked = create_api_key(user=alice, name="revoked")[0]
    revoke_api_key(revoked)
    create_api_key(user=django_user_model.objects.create_user("bob"), name="bob's")
    assert [key.name for key in keys_of(user=alice)] == ["revoked", "expired", "active"]
    assert [key_state(key) for key in (active, expired, revoked)] == [
        KeyState.ACTIVE,
        KeyState.EXPIRED,
        KeyState.REVOKED,
    ]
    assert live_key_count(user=alice) == 1


def test_past_the_limit_no_key_is_made_until_one_is_revoked(alice, settings):
    settings.CHAT_MAX_API_KEYS_PER_USER = 2
    create_api_key(user=alice, name="gone by", expires_at=timezone.now() - timedelta(seconds=1))
    first = create_api_key(user=alice, name="one")[0]
    create_api_key(user=alice, name="two")
    with pytest.raises(ValidationError) as refused:
        create_api_key(user=alice, name="three")
    assert refused.value.code == "too_many_api_keys"
    assert "the most active API keys this site allows (2)" in refused.value.messages[0]
    assert not ApiKey.objects.filter(name="three").exists()
    revoke_api_key(first)
    assert create_api_key(user=alice, name="three")[0].name == "three"


def test_revoking_many_keys_leaves_earlier_revocations_alone(alice):
    earlier = create_api_key(user=alice, name="earlier")[0]
    revoke_api_key(earlier)
    create_api_key(user=alice, name="live")
    assert revoke_api_keys(keys=keys_of(user=alice)) == 1
    assert ApiKey.objects.get(pk=earlier.pk).revoked_at == earlier.revoked_at
    assert live_key_count(user=alice) == 0

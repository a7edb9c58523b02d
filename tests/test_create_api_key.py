"""`manage.py create_api_key`: a key for scripts and tests, printed once as the output's last line."""

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from streaming.api_keys import authenticate_api_key, create_api_key
from streaming.models import ApiKey
from tests.live_site import PASSWORD


@pytest.fixture
def alice(db, django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


def run(*args: str) -> list[str]:
    stdout = StringIO()
    call_command("create_api_key", *args, stdout=stdout, stderr=StringIO())
    return stdout.getvalue().splitlines()


def test_the_last_line_is_a_key_that_works(alice):
    *about, full_key = run("alice")
    key = authenticate_api_key(full_key)
    assert key.user == alice and key.name == "created by manage.py" and key.expires_at is None
    assert about == [f"Created API key {key.public_id} (created by manage.py) for alice; it never expires:"]


def test_a_name_and_an_expiry_can_be_given(alice):
    lines = run("alice", "--name", "nightly job", "--expires-days", "7")
    key = authenticate_api_key(lines[-1])
    assert key.name == "nightly job"
    assert timedelta(days=7) - timedelta(minutes=1) < key.expires_at - timezone.now() <= timedelta(days=7)
    assert f"{key.public_id} (nightly job)" in lines[0] and f"expires {key.expires_at:%Y-%m-%d}" in lines[0]


def test_an_unknown_user_is_an_error(alice):
    with pytest.raises(CommandError, match="There is no user 'mallory'"):
        run("mallory")
    assert not ApiKey.objects.exists()


def test_an_inactive_user_is_an_error(alice):
    alice.is_active = False
    alice.save()
    with pytest.raises(CommandError, match="inactive"):
        run("alice")
    assert not ApiKey.objects.exists()


@pytest.mark.parametrize("days", ["0", "-3", "99999999"])
def test_a_bad_number_of_days_is_an_error(alice, days):
    with pytest.raises(CommandError, match="--expires-days"):
        run("alice", "--expires-days", days)
    assert not ApiKey.objects.exists()


def test_past_the_key_limit_is_an_error(alice, settings):
    settings.CHAT_MAX_API_KEYS_PER_USER = 1
    create_api_key(user=alice, name="the one")
    with pytest.raises(CommandError, match="the most active API keys this site allows \\(1\\)"):
        run("alice")
    assert ApiKey.objects.count() == 1


def test_without_the_required_permission_the_key_is_made_with_a_warning(alice, settings):
    settings.CHAT_API_KEYS_REQUIRE_PERMISSION = True
    stdout, stderr = StringIO(), StringIO()
    call_command("create_api_key", "alice", stdout=stdout, stderr=stderr)
    assert "lacks the streaming.use_api_keys permission" in stderr.getvalue()
    assert ApiKey.objects.get().public_id in stdout.getvalue()

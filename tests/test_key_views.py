"""The API keys page: a signed-in user lists, creates (seeing the key once) and revokes their own keys."""

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.test import Client
from django.utils import timezone

from streaming.api_keys import KEY_PATTERN, authenticate_api_key, create_api_key
from streaming.errors import ApiError
from streaming.models import ApiKey

KEYS_URL = "/keys/"


@pytest.fixture
def alices_client(alice) -> Client:
    client = Client()
    client.force_login(alice)
    return client


def shown_key(page: str) -> str:
    [full_key] = {match.group(0) for match in KEY_PATTERN.finditer(page)}
    return full_key


def create(client: Client, name: str = "laptop", expires_days: str = "") -> str:
    response = client.post(KEYS_URL, {"name": name, "expires_days": expires_days})
    assert response.status_code == 200
    return response.content.decode()


def revoke_url(key: ApiKey) -> str:
    return f"/keys/{key.pk}/revoke"


def test_the_page_needs_a_login(client, alice):
    key = create_api_key(user=alice, name="laptop")[0]
    response = client.get(KEYS_URL)
    assert response.status_code == 302 and response["Location"] == f"/accounts/login/?next={KEYS_URL}"
    assert client.post(revoke_url(key)).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_the_chat_page_links_to_the_keys_page(alices_client):
    assert f'href="{KEYS_URL}"' in alices_client.get("/").content.decode()


def test_the_list_shows_only_ones_own_keys_and_never_a_secret(alices_client, alice, bob):
    laptop, laptop_key = create_api_key(user=alice, name="laptop", expires_at=timezone.now() + timedelta(days=3))
    create_api_key(user=alice, name="old script", expires_at=timezone.now() - timedelta(days=1))
    bobs_key = create_api_key(user=bob, name="notebook of bob")[0]
    page = alices_client.get(KEYS_URL).content.decode()
    assert "laptop" in page and f"{laptop.public_id}…" in page and "old script" in page
    assert ">active<" in page and ">expired<" in page
    assert "notebook of bob" not in page and bobs_key.public_id not in page
    assert KEY_PATTERN.search(page) is None and laptop_key not in page


def test_a_new_key_is_shown_once_and_works(alices_client, alice):
    response = alices_client.post(KEYS_URL, {"name": "laptop", "expires_days": ""})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    full_key = shown_key(response.content.decode())
    assert "shown only this once" in response.content.decode() and 'id="copy-key"' in response.content.decode()
    key = authenticate_api_key(full_key)
    assert key.user == alice and key.name == "laptop" and key.expires_at is None
    later = alices_client.get(KEYS_URL).content.decode()
    assert key.public_id in later and full_key not in later and full_key.removeprefix(f"{key.public_id}_") not in later


def test_a_key_can_expire_in_a_chosen_number_of_days(alices_client, alice):
    key = authenticate_api_key(shown_key(create(alices_client, expires_days="30")))
    assert timedelta(days=30) - timedelta(minutes=1) < key.expires_at - timezone.now() <= timedelta(days=30)


def test_the_page_says_how_to_use_the_key_from_code(alices_client):
    page = alices_client.get(KEYS_URL).content.decode()
    assert "http://testserver/v1" in page and "OPENAI_BASE_URL" in page


def test_a_key_needs_a_name(alices_client, alice):
    page = create(alices_client, name="  ")
    assert "This field is required." in page and KEY_PATTERN.search(page) is None
    assert not ApiKey.objects.exists()


def test_revoking_a_key_stops_it_at_once(alices_client, alice):
    key, full_key = create_api_key(user=alice, name="laptop")
    response = alices_client.post(revoke_url(key), follow=True)
    assert response.redirect_chain == [(KEYS_URL, 302)]
    page = response.content.decode()
    assert f"Revoked laptop ({key.public_id})" in page and ">revoked<" in page
    assert f'action="{revoke_url(key)}"' not in page
    with pytest.raises(ApiError) as refused:
        authenticate_api_key(full_key)
    assert refused.value.code == "api_key_revoked"


def test_revoking_someone_elses_key_is_not_found(alices_client, bob):
    bobs_key, bobs_full_key = create_api_key(user=bob, name="bob's")
    assert alices_client.post(revoke_url(bobs_key)).status_code == 404
    assert authenticate_api_key(bobs_full_key).pk == bobs_key.pk


def test_revoking_takes_a_post(alices_client, alice):
    key = create_api_key(user=alice, name="laptop")[0]
    assert alices_client.get(revoke_url(key)).status_code == 405
    assert ApiKey.objects.get(pk=key.pk).revoked_at is None


def test_creating_and_revoking_need_the_pages_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    key = create_api_key(user=alice, name="laptop")[0]
    assert client.post(KEYS_URL, {"name": "forged"}).status_code == 403
    assert client.post(revoke_url(key)).status_code == 403
    assert list(ApiKey.objects.values_list("name", "revoked_at")) == [("laptop", None)]

    page = client.get(KEYS_URL).content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    assert client.post(KEYS_URL, {"name": "mine", "csrfmiddlewaretoken": token}).status_code == 200
    assert client.post(revoke_url(key), {"csrfmiddlewaretoken": token}).status_code == 302
    assert ApiKey.objects.get(pk=key.pk).revoked_at is not None


def test_past_the_limit_the_form_says_so_and_makes_no_key(alices_client, alice, settings):
    settings.CHAT_MAX_API_KEYS_PER_USER = 2
    create_api_key(user=alice, name="one")
    create_api_key(user=alice, name="two")
    page = create(alices_client, name="three")
    assert "You already have the most active API keys this site allows (2)." in page
    assert KEY_PATTERN.search(page) is None and not ApiKey.objects.filter(name="three").exists()


def test_without_the_required_permission_keys_can_be_revoked_but_not_made(alices_client, alice, settings):
    settings.CHAT_API_KEYS_REQUIRE_PERMISSION = True
    key = create_api_key(user=alice, name="from before")[0]
    page = alices_client.get(KEYS_URL).content.decode()
    assert "This account may not have API keys on this site." in page and 'id="create-key"' not in page
    assert "from before" in page and f'action="{revoke_url(key)}"' in page
    assert alices_client.post(KEYS_URL, {"name": "sneaky"}).status_code == 403
    assert alices_client.post(revoke_url(key)).status_code == 302
    assert list(ApiKey.objects.values_list("name", flat=True)) == ["from before"]

    alice.user_permissions.add(Permission.objects.get(codename="use_api_keys"))
    assert 'id="create-key"' in alices_client.get(KEYS_URL).content.decode()
    assert authenticate_api_key(shown_key(create(alices_client, name="allowed"))).name == "allowed"

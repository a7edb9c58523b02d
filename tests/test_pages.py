"""The pages a person sees: login, the chat page, logout, and the first-run account."""

import re

import pytest
from django.core.management import call_command
from django.test import Client

from tests.live_site import BASE_DIR, PASSWORD, TEST_API_KEY


@pytest.fixture
def client_of(db, django_user_model):
    def make(**extra):
        user = django_user_model.objects.create_user("carol", password=PASSWORD, **extra)
        client = Client()
        client.force_login(user)
        return client

    return make


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/accounts/login/?next=/"
    login = client.get(response["Location"])
    assert login.status_code == 200 and 'name="password"' in login.content.decode()


def test_logging_in_through_the_form_opens_the_chat_page(client, django_user_model):
    django_user_model.objects.create_user("dave", password=PASSWORD)
    response = client.post("/accounts/login/", {"username": "dave", "password": PASSWORD, "next": "/"}, follow=True)
    page = response.content.decode()
    assert response.redirect_chain == [("/", 302)]
    assert "Signed in as dave" in page and 'id="send"' in page and 'id="stop"' in page


def test_wrong_password_shows_an_error(client, django_user_model):
    django_user_model.objects.create_user("erin", password=PASSWORD)
    response = client.post("/accounts/login/", {"username": "erin", "password": "nope"})
    assert "didn't match" in response.content.decode()


def test_chat_page_never_contains_the_api_key(client_of):
    page = client_of().get("/").content.decode()
    assert TEST_API_KEY not in page
    assert 'id="demo-label"' not in page  # a key is configured in the test settings


def test_chat_page_inserts_model_text_only_as_text():
    script = (BASE_DIR / "streaming/templates/streaming/chat.html").read_text()
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script


def test_logging_out_ends_api_access(client_of):
    client = client_of()
    assert client.post("/accounts/logout/").status_code == 302
    response = client.post("/api/chat/stream", {"messages": []}, content_type="application/json")
    assert response.status_code == 401


def test_first_run_creates_one_account_with_a_generated_password(db, capsys, django_user_model):
    call_command("ensure_local_account")
    printed = capsys.readouterr().out
    password = re.search(r"password: (\S+)", printed).group(1)
    assert len(password) >= 12
    assert Client().login(username="admin", password=password)
    assert django_user_model.objects.get().is_superuser

    call_command("ensure_local_account")
    assert "password:" not in capsys.readouterr().out
    assert django_user_model.objects.count() == 1


def test_a_typed_logout_url_asks_to_confirm_and_posting_logs_out(client_of):
    client = client_of()
    confirm = client.get("/accounts/logout/")
    assert confirm.status_code == 200 and 'action="/accounts/logout/"' in confirm.content.decode()
    assert client.get("/").status_code == 200  # still logged in after the GET
    client.post("/accounts/logout/")
    assert client.get("/").status_code == 302

"""The Django internals `chatproxy.middleware` relies on to run the stock middleware's hooks inline.

Each test fails loudly if a Django upgrade changes what the `__acall__` override copies or skips.
"""

from __future__ import annotations

import threading

import pytest
from asgiref.sync import iscoroutinefunction
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.http import HttpRequest, HttpResponse
from django.middleware import common
from django.test import AsyncClient, RequestFactory
from django.utils.deprecation import MiddlewareMixin

from chatproxy.middleware import (
    AuthenticationMiddleware,
    CommonMiddleware,
    InlineHooksMixin,
    MessageMiddleware,
    SessionMiddleware,
)
from streaming.models import UsageLimit

OURS_AND_DJANGOS = [
    (SessionMiddleware, sessions.SessionMiddleware),
    (CommonMiddleware, common.CommonMiddleware),
    (AuthenticationMiddleware, auth.AuthenticationMiddleware),
    (MessageMiddleware, messages.MessageMiddleware),
]


class Recording(MiddlewareMixin):
    """Stock-style middleware whose hooks note their name and thread; `answer` short-circuits the view."""

    answer: HttpResponse | None = None
    calls: list[tuple[str, threading.Thread]]

    def process_request(self, request: HttpRequest) -> HttpResponse | None:
        self.calls.append(("process_request", threading.current_thread()))
        return self.answer

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        self.calls.append(("process_response", threading.current_thread()))
        response["X-Seen"] = "yes"
        return response


class InlineRecording(InlineHooksMixin, Recording):
    pass


async def run(middleware_class: type[Recording], answer: HttpResponse | None = None) -> tuple[list, HttpResponse]:
    events: list[tuple[str, threading.Thread]] = []

    async def view(request: HttpRequest) -> HttpResponse:
        events.append(("get_response", threading.current_thread()))
        return HttpResponse("from the view")

    middleware = middleware_class(view)
    middleware.answer = answer
    middleware.calls = events
    # What the handler looks at to call the middleware without wrapping it in a thread.
    assert iscoroutinefunction(middleware)
    response = await middleware(RequestFactory().get("/"))
    return events, response


async def test_our_acall_runs_djangos_hooks_in_djangos_order_but_on_the_event_loop():
    loop_thread = threading.current_thread()
    stock_events, stock_response = await run(Recording)
    inline_events, inline_response = await run(InlineRecording)
    expected = ["process_request", "get_response", "process_response"]
    assert [name for name, _ in stock_events] == [name for name, _ in inline_events] == expected
    assert stock_events[0][1] is not loop_thread and stock_events[2][1] is not loop_thread
    assert {thread for _, thread in inline_events} == {loop_thread}
    assert stock_response.content == inline_response.content == b"from the view"
    assert stock_response["X-Seen"] == inline_response["X-Seen"] == "yes"


async def test_a_response_from_process_request_skips_the_view_in_both():
    refusal = HttpResponse("refused", status=403)
    stock_events, stock_response = await run(Recording, answer=refusal)
    inline_events, inline_response = await run(InlineRecording, answer=refusal)
    assert [name for name, _ in stock_events] == [name for name, _ in inline_events]
    assert [name for name, _ in inline_events] == ["process_request", "process_response"]
    assert stock_response.status_code == inline_response.status_code == 403


def test_djangos_acall_runs_no_hooks_but_the_two_ours_inlines():
    names = MiddlewareMixin.__acall__.__code__.co_names
    assert {name for name in names if name.startswith("process_")} == {"process_request", "process_response"}
    assert "__acall__" in MiddlewareMixin.__call__.__code__.co_names


@pytest.mark.parametrize(("ours", "djangos"), OURS_AND_DJANGOS, ids=lambda cls: cls.__module__)
def test_the_stock_classes_we_wrap_have_no_call_of_their_own_and_no_hooks_that_cost_a_thread(ours, djangos):
    assert ours.__mro__[1:3] == (InlineHooksMixin, djangos)
    assert djangos.__call__ is MiddlewareMixin.__call__ and djangos.__acall__ is MiddlewareMixin.__acall__
    # The handler runs these hooks itself, each through a thread: ours would save nothing on them.
    hooks = {name for name in dir(djangos) if name.startswith("process_")}
    assert hooks and hooks <= {"process_request", "process_response"}


@pytest.mark.django_db(transaction=True)
async def test_a_login_and_an_admin_message_survive_to_the_next_page(django_user_model):
    admin = await django_user_model.objects.acreate_superuser("root", password="pw-root-123")
    client = AsyncClient()
    login = await client.post("/admin/login/", {"username": "root", "password": "pw-root-123", "next": "/admin/"})
    assert login.status_code == 302 and login["Location"] == "/admin/"
    added = await client.post("/admin/streaming/usagelimit/add/", {"user": admin.pk, "requests_per_minute": "7"})
    assert added.status_code == 302
    page = (await client.get(added["Location"])).content.decode()
    assert "was added successfully" in page
    assert await UsageLimit.objects.filter(user=admin, requests_per_minute=7).aexists()

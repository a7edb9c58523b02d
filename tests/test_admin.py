"""The usage log and the API keys in the Django admin: browsable, filterable, read-only, with per-user totals."""

import re
from datetime import UTC, datetime, timedelta

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from streaming.api_keys import KEY_PATTERN, authenticate_api_key, create_api_key, revoke_api_key
from streaming.errors import ApiError
from streaming.limits import EffectiveLimits, record_refusal
from streaming.models import ApiKey, LimitRefusal, UsageLimit, UsageLog
from streaming.reports import UserTotals, per_user_totals


@pytest.fixture
def rows(db, django_user_model):
    alice = django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    now = timezone.now()

    def log(user, status, total, model="gpt-test", days_ago=0):
        return UsageLog.objects.create(
            user=user,
            created_at=now - timedelta(days=days_ago),
            model=model,
            status=status,
            prompt_tokens=total // 2,
            completion_tokens=total - total // 2,
            total_tokens=total,
            duration_ms=100,
        )

    return [
        log(alice, "completed", 100),
        log(alice, "cancelled", 10, model="gpt-test-large"),
        log(bob, "error", 0),
        log(bob, "completed", 40, days_ago=40),
    ]


@pytest.fixture
def staff(db, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="pw-root-123")
    client = Client()
    client.force_login(admin)
    return client


def test_changelist_lists_filters_and_searches(staff, rows):
    page = staff.get("/admin/streaming/usagelog/").content.decode()
    assert "4 usage logs" in page
    filtered = staff.get("/admin/streaming/usagelog/?status__exact=cancelled").content.decode()
    assert "gpt-test-large" in filtered and "4 usage logs" not in filtered
    assert "1 usage log" in filtered
    searched = staff.get("/admin/streaming/usagelog/?q=bob").content.decode()
    assert "2 usage logs" in searched


def test_changelist_filters_by_finish_reason_and_tool_calls(staff, rows):
    UsageLog.objects.filter(pk=rows[0].pk).update(finish_reason="tool_calls", tool_calls=2)
    UsageLog.objects.filter(pk=rows[3].pk).update(finish_reason="stop")
    page = staff.get("/admin/streaming/usagelog/").content.decode()
    assert "none (did not end)" in page and "?finish_reason=tool_calls" in page

    assert "1 usage log" in staff.get("/admin/streaming/usagelog/?finish_reason=tool_calls").content.decode()
    assert "1 usage log" in staff.get("/admin/streaming/usagelog/?finish_reason=stop").content.decode()
    assert "2 usage logs" in staff.get("/admin/streaming/usagelog/?finish_reason=none").content.decode()
    assert "1 usage log" in staff.get("/admin/streaming/usagelog/?made_tool_calls=yes").content.decode()
    assert "3 usage logs" in staff.get("/admin/streaming/usagelog/?made_tool_calls=no").content.decode()


def test_rows_are_read_only(staff, rows):
    assert staff.get("/admin/streaming/usagelog/add/").status_code == 403
    change = staff.get(f"/admin/streaming/usagelog/{rows[0].pk}/change/")
    assert change.status_code == 200
    assert 'name="_save"' not in change.content.decode()
    assert staff.post(f"/admin/streaming/usagelog/{rows[0].pk}/change/", {"status": "error"}).status_code == 403
    rows[0].refresh_from_db()
    assert rows[0].status == "completed"


def test_per_user_totals_show_usage_against_limits(staff, rows, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = 1000
    settings.CHAT_MONTHLY_TOKEN_BUDGET = 0
    settings.CHAT_REQUESTS_PER_MINUTE = 20
    settings.CHAT_CONCURRENT_STREAMS = 2
    bob = rows[2].user
    group = Group.objects.create(name="power users")
    group.user_set.add(bob)
    UsageLimit.objects.create(group=group, daily_token_budget=5000, requests_per_minute=0)
    UsageLimit.objects.create(user=bob, concurrent_streams=4)
    record_refusal(bob, LimitRefusal.Limit.CONCURRENT_STREAMS)
    record_refusal(bob, LimitRefusal.Limit.CONCURRENT_STREAMS)
    page = staff.get("/admin/streaming/usagelog/per-user-totals/").content.decode()

    def cells(username):
        row = page[page.index(f">{username}<") :].split("</tr>")[0]
        return [cell.split("</td>")[0] for cell in row.split("<td>")[1:]]

    # requests, completed, errors, cancelled, prompt, completion, total, today, this month,
    # then the limits that apply: daily, monthly, per minute, open streams; and refusals today.
    assert cells("alice") == ["2", "1", "0", "1", "55", "55", "110", "110", "110", "1000", "no limit", "20", "2", "0"]
    assert cells("bob") == ["2", "1", "1", "0", "20", "20", "40", "0", "0", "5000", "no limit", "no limit", "4", "2"]


def test_non_staff_cannot_see_the_usage_log(client, db, django_user_model, rows):
    user = django_user_model.objects.create_user("mallory", password="pw-mallory-1")
    client.force_login(user)
    assert client.get("/admin/streaming/usagelog/").status_code == 302
    assert client.get("/admin/streaming/usagelog/per-user-totals/").status_code == 302


def test_heaviest_users_come_first_and_refused_only_users_are_listed_with_no_usage(rows, django_user_model):
    for name in ("dave", "carol"):
        record_refusal(django_user_model.objects.create_user(name), LimitRefusal.Limit.REQUESTS_PER_MINUTE)
    zoe = django_user_model.objects.create_user("zoe")
    UsageLog.objects.create(
        user=zoe, created_at=timezone.now(), model="gpt-test", status="completed", total_tokens=500, duration_ms=1
    )
    django_user_model.objects.create_user("idle")
    totals = per_user_totals()
    assert [row.username for row in totals] == ["zoe", "alice", "bob", "carol", "dave"]
    carol = totals[3]
    assert (carol.requests, carol.total_tokens, carol.tokens_today, carol.refusals_today) == (0, 0, 0, 1)


def test_totals_count_today_and_this_month_from_midnight_and_the_first(db, django_user_model, settings):
    settings.CHAT_DAILY_TOKEN_BUDGET = 0
    alice = django_user_model.objects.create_user("alice")

    def log(when, total):
        UsageLog.objects.create(
            user=alice,
            created_at=when,
            model="gpt-test",
            status="completed",
            prompt_tokens=1,
            completion_tokens=total - 1,
            total_tokens=total,
            duration_ms=1,
        )

    log(datetime(2024, 3, 31, 23, 59, tzinfo=UTC), 1000)
    log(datetime(2024, 4, 1, 0, 0, tzinfo=UTC), 200)
    log(datetime(2024, 4, 14, 23, 59, tzinfo=UTC), 30)
    log(datetime(2024, 4, 15, 0, 0, tzinfo=UTC), 4)
    [row] = per_user_totals(now=datetime(2024, 4, 15, 12, 0, tzinfo=UTC))
    assert row == UserTotals(
        user_id=alice.pk,
        username="alice",
        requests=4,
        completed=4,
        errors=0,
        cancelled=0,
        prompt_tokens=4,
        completion_tokens=1230,
        total_tokens=1234,
        tokens_today=4,
        tokens_this_month=234,
        refusals_today=0,
        limits=EffectiveLimits(
            requests_per_minute=settings.CHAT_REQUESTS_PER_MINUTE,
            concurrent_streams=settings.CHAT_CONCURRENT_STREAMS,
            daily_token_budget=0,
            monthly_token_budget=settings.CHAT_MONTHLY_TOKEN_BUDGET,
        ),
    )


def test_the_totals_take_as_many_queries_for_many_users_as_for_two(rows, django_user_model):
    group = Group.objects.create(name="many")
    UsageLimit.objects.create(group=group, daily_token_budget=10)
    with CaptureQueriesContext(connection) as few:
        per_user_totals()
    for n in range(10):
        user = django_user_model.objects.create_user(f"user{n}")
        group.user_set.add(user)
        UsageLimit.objects.create(user=user, concurrent_streams=n + 1)
        UsageLog.objects.create(user=user, created_at=timezone.now(), model="gpt-test", status="error", duration_ms=1)
        record_refusal(user, LimitRefusal.Limit.CONCURRENT_STREAMS)
    with CaptureQueriesContext(connection) as many:
        totals = per_user_totals()
    assert len(totals) == 12
    assert {row.limits.daily_token_budget for row in totals if row.username.startswith("user")} == {10}
    assert len(many.captured_queries) == len(few.captured_queries)


@pytest.fixture
def keys(rows):
    alice, bob = rows[0].user, rows[2].user
    laptop, laptop_key = create_api_key(user=alice, name="alice laptop")
    old = create_api_key(user=alice, name="alice old", expires_at=timezone.now() - timedelta(days=1))[0]
    gone = create_api_key(user=bob, name="bob gone")[0]
    revoke_api_key(gone)
    notebook, notebook_key = create_api_key(user=bob, name="bob notebook")
    return {"laptop": (laptop, laptop_key), "old": (old, ""), "gone": (gone, ""), "notebook": (notebook, notebook_key)}


def test_staff_see_everyones_keys_but_never_a_secret(staff, keys):
    page = staff.get("/admin/streaming/apikey/").content.decode()
    assert "4 API keys" in page and "manage.py create_api_key" in page and "Revoke selected keys" in page
    assert "Delete selected" not in page
    for key, _ in keys.values():
        assert key.name in page and key.public_id in page
        assert key.secret_hash.rpartition("$")[2] not in page
    assert KEY_PATTERN.search(page) is None
    assert ">active<" in page and ">expired<" in page and ">revoked<" in page
    laptop, laptop_key = keys["laptop"]
    change = staff.get(f"/admin/streaming/apikey/{laptop.pk}/change/").content.decode()
    assert laptop.public_id in change and "alice laptop" in change and 'name="_save"' not in change
    assert laptop.secret_hash.rpartition("$")[2] not in change and laptop_key not in change
    assert staff.get("/admin/streaming/apikey/add/").status_code == 403
    assert staff.post(f"/admin/streaming/apikey/{laptop.pk}/delete/").status_code == 403


def test_keys_filter_by_state_and_user_and_are_found_by_public_id(staff, keys):
    def count(query):
        return re.search(r"(\d+) API keys?\b", staff.get(f"/admin/streaming/apikey/?{query}").content.decode())[1]

    assert [count(f"state={state}") for state in ("active", "expired", "revoked")] == ["2", "1", "1"]
    assert count(f"user__id__exact={keys['notebook'][0].user_id}") == "2"
    assert count("q=bob") == "2" and count("q=laptop") == "1"
    assert count(f"q={keys['notebook'][0].public_id}…") == "1"


def test_staff_revoke_selected_keys_and_they_stop_working(staff, keys):
    laptop, laptop_key = keys["laptop"]
    notebook, notebook_key = keys["notebook"]
    gone = keys["gone"][0]
    response = staff.post(
        "/admin/streaming/apikey/",
        {"action": "revoke_selected", "_selected_action": [laptop.pk, notebook.pk, gone.pk]},
        follow=True,
    )
    assert "Revoked 2 keys." in response.content.decode()
    for full_key in (laptop_key, notebook_key):
        with pytest.raises(ApiError) as refused:
            authenticate_api_key(full_key)
        assert refused.value.code == "api_key_revoked"
    assert ApiKey.objects.get(pk=gone.pk).revoked_at == gone.revoked_at


def test_staff_who_may_only_view_keys_cannot_revoke_them(client, keys, django_user_model):
    viewer = django_user_model.objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_apikey"))
    client.force_login(viewer)
    page = client.get("/admin/streaming/apikey/").content.decode()
    assert "4 API keys" in page and "Revoke selected keys" not in page
    laptop, laptop_key = keys["laptop"]
    client.post("/admin/streaming/apikey/", {"action": "revoke_selected", "_selected_action": [laptop.pk]})
    assert authenticate_api_key(laptop_key).pk == laptop.pk


def test_non_staff_cannot_see_the_keys(client, keys):
    client.force_login(keys["laptop"][0].user)
    assert client.get("/admin/streaming/apikey/").status_code == 302


def test_usage_rows_say_which_key_made_them(staff, rows, keys):
    laptop = keys["laptop"][0]
    UsageLog.objects.filter(pk=rows[0].pk).update(api_key=laptop)
    page = staff.get("/admin/streaming/usagelog/").content.decode()
    assert page.count(laptop.public_id) == 1
    by_key = staff.get("/admin/streaming/usagelog/?made_by=api_key").content.decode()
    assert "1 usage log" in by_key and laptop.public_id in by_key
    by_page = staff.get("/admin/streaming/usagelog/?made_by=page").content.decode()
    assert "3 usage logs" in by_page and laptop.public_id not in by_page


def test_the_changelist_shows_and_filters_the_endpoint_and_finds_a_row_by_the_upstreams_answer_id(staff, rows):
    UsageLog.objects.filter(pk=rows[0].pk).update(endpoint="responses", upstream_response_id="resp_abc123")
    page = staff.get("/admin/streaming/usagelog/").content.decode()
    assert "Endpoint" in page and "Responses" in page and "Chat completions" in page
    responses = staff.get("/admin/streaming/usagelog/?endpoint__exact=responses").content.decode()
    assert "1 usage log" in responses
    found = staff.get("/admin/streaming/usagelog/?q=resp_abc123").content.decode()
    assert "1 usage log" in found
    assert "0 usage logs" in staff.get("/admin/streaming/usagelog/?q=resp_abc").content.decode()  # ids match whole

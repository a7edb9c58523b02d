"""The usage log in the Django admin: browsable, filterable, read-only, with per-user totals."""

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from streaming.limits import record_refusal
from streaming.models import LimitRefusal, UsageLimit, UsageLog


@pytest.fixture
def rows(db, django_user_model):
    alice = django_user_model.objects.create_user("alice", password="pw-alice-123")
    bob = django_user_model.objects.create_user("bob", password="pw-bob-123")
    now = timezone.now()

    def log(user, status, total, model="gpt-test", days_ago=0):
        return UsageLog.objects.create(
            user=user, created_at=now - timedelta(days=days_ago), model=model, status=status,
            prompt_tokens=total // 2, completion_tokens=total - total // 2, total_tokens=total, duration_ms=100,
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
        row = page[page.index(f">{username}<"):].split("</tr>")[0]
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

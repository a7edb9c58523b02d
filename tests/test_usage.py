"""The accounting guarantees: a usage row from admission, settled exactly once; rows of dead
processes swept to `interrupted`; reservations that make budgets hard."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.core.cache import cache
from django.core.management import call_command
from django.utils import timezone

from streaming.errors import ApiError
from streaming.limits import Admission, Reservation, admit, spending
from streaming.models import ModelPrice, UsageLimit, UsageLog
from streaming.usage import (
    STALE_SECONDS,
    StreamAccount,
    open_usage_row,
    save_usage,
    sweep_interrupted,
    withdraw_usage_row,
)
from tests.fake_upstream import Reply
from tests.live_site import MODEL, PROMPT_ESTIMATE, STREAM_URL, in_progress_row, wait_for_rows

BODY = {"messages": [{"role": "user", "content": "Hi"}]}


def test_a_stream_has_its_row_in_progress_from_admission_then_settled_once(site_client, fake_upstream, user):
    fake_upstream.will_reply(Reply(pieces=["slow "] * 10, delay=0.1, usage=(7, 10)))
    with site_client.stream("POST", STREAM_URL, json={**BODY, "max_tokens": 50}) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.strip())
        row = UsageLog.objects.get(user=user)
        assert row.status == "in_progress" and row.total_tokens == 0
        assert row.prompt_tokens == PROMPT_ESTIMATE and row.reserved_tokens == PROMPT_ESTIMATE + 50
        assert row.last_seen_at is not None
        for _ in lines:
            pass
    (settled,) = wait_for_rows(user)
    assert settled.pk == row.pk and settled.status == "completed"
    assert (settled.prompt_tokens, settled.completion_tokens, settled.total_tokens) == (7, 10, 17)
    assert not settled.tokens_estimated


@pytest.mark.django_db(transaction=True)
def test_settling_twice_writes_and_counts_once(user):
    UsageLimit.objects.create(user=user, daily_token_budget=1000)
    spending(user.pk)  # the counters are kept from here on
    admission = Admission(reserved=Reservation(tokens=300))
    row = in_progress_row(user, age=0, reserved=300)
    cache.incr(f"chatproxy:tokens:{user.pk}:{timezone.localdate():%Y-%m-%d}", 300)  # as admission held it
    account = StreamAccount(user=user, model=MODEL, estimated_input_tokens=PROMPT_ESTIMATE, row_id=row.pk)
    account.reserved, account.created_at = admission.reserved, row.created_at
    account.output("x" * 40)
    account.end()

    save_usage(account, admission)
    save_usage(account, admission)

    assert UsageLog.objects.count() == 1
    settled = UsageLog.objects.get()
    assert settled.status == "completed" and settled.total_tokens == PROMPT_ESTIMATE + 10
    assert spending(user.pk).tokens_today == PROMPT_ESTIMATE + 10  # the reservation replaced, once


@pytest.mark.django_db(transaction=True)
def test_the_sweep_settles_rows_of_dead_processes_as_interrupted_and_releases_their_reservations(user):
    ModelPrice.objects.create(
        model=MODEL,
        input_per_million=Decimal(100_000),
        output_per_million=Decimal(100_000),
        valid_from=timezone.now() - timedelta(days=1),
    )
    spending(user.pk)
    dead = in_progress_row(user, age=STALE_SECONDS + 5, reserved=1000, completion=12)
    cache.incr(f"chatproxy:tokens:{user.pk}:{timezone.localdate():%Y-%m-%d}", 1000)
    alive = in_progress_row(user, age=1, reserved=500)
    assert spending(user.pk).tokens_today == 1000

    call_command("sweep_interrupted")

    dead.refresh_from_db()
    assert dead.status == "interrupted" and dead.tokens_estimated
    assert (dead.prompt_tokens, dead.completion_tokens, dead.total_tokens) == (PROMPT_ESTIMATE, 12, 17)
    assert dead.cost == Decimal("1.7") and "stopped before it ended" in dead.error_message
    alive.refresh_from_db()
    assert alive.status == "in_progress"
    assert spending(user.pk).tokens_today == 17
    assert sweep_interrupted() == 0  # nothing is settled twice


@pytest.mark.django_db(transaction=True)
def test_a_seeded_counter_counts_what_open_streams_hold(user):
    UsageLog.objects.create(user=user, created_at=timezone.now(), model=MODEL, status="completed", total_tokens=40)
    in_progress_row(user, age=1, reserved=300)
    assert spending(user.pk).tokens_today == 340


@pytest.mark.django_db(transaction=True)
def test_the_sweep_frees_the_concurrency_slot_a_dead_process_held(user):
    UsageLimit.objects.create(user=user, concurrent_streams=1, requests_per_minute=0)
    admission = admit(user, model=MODEL, input_tokens=PROMPT_ESTIMATE, output_tokens=10)
    open_usage_row(
        user=user, api_key=None, endpoint="chat.completions", model=MODEL, input_tokens=5, admission=admission
    )
    with pytest.raises(ApiError) as refused:  # the process "dies" holding its slot
        admit(user, model=MODEL, input_tokens=PROMPT_ESTIMATE, output_tokens=10)
    assert refused.value.code == "concurrent_streams"

    assert sweep_interrupted(stale_seconds=0) == 1
    admit(user, model=MODEL, input_tokens=PROMPT_ESTIMATE, output_tokens=10).release()


@pytest.mark.django_db(transaction=True)
def test_an_admission_withdrawn_before_the_upstream_leaves_no_row_and_gives_back_once(user):
    UsageLimit.objects.create(user=user, daily_token_budget=10_000, requests_per_minute=0)
    admission = admit(user, model=MODEL, input_tokens=PROMPT_ESTIMATE, output_tokens=1000)
    row = open_usage_row(
        user=user, api_key=None, endpoint="chat.completions", model=MODEL, input_tokens=5, admission=admission
    )
    assert spending(user.pk).tokens_today == PROMPT_ESTIMATE + 1000

    withdraw_usage_row(user_id=user.pk, row=row, admission=admission)
    withdraw_usage_row(user_id=user.pk, row=row, admission=admission)

    assert not UsageLog.objects.exists() and sweep_interrupted(stale_seconds=0) == 0
    assert spending(user.pk).tokens_today == 0

"""A soak of the accounting: 1,000 streams across two server processes, a fifth of them abandoned
by their client, one process killed midway and restarted. Afterwards every request the upstream
received has exactly one settled usage row, and the user's slots and reservations are all free.

It takes a while (see the run time it prints and records), so it runs only against PostgreSQL and
Redis, in CI's second run (CHATPROXY_REQUIRE_SERVICES=1).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from django.utils import timezone

from streaming.limits import spending
from streaming.models import UsageLimit, UsageLog
from tests.fake_upstream import Reply
from tests.live_site import STREAM_URL, LiveSite, logged_in_client
from tests.test_scale_out import (
    AMPLE_TOKEN_BUDGET,
    REQUIRED_BY,
    fire_across,
    require_services,
    sites_environment,
    statuses,
    sweep_every_open_row,
    wait_until,
)

pytestmark = pytest.mark.skipif(
    not os.environ.get(REQUIRED_BY),
    reason=f"the soak (1,000 streams, two server processes) runs only with PostgreSQL and Redis: {REQUIRED_BY}=1",
)

STREAMS = 1000
CONCURRENCY = 50
ABORTED_SHARE = 0.2
SEED = 16
PIECES = 12
# Seconds between pieces: long enough that the kill catches streams mid-way.
PIECE_DELAY = 0.08
# The user's concurrency limit: above the soak's concurrency plus what a killed process held.
SLOTS = 2 * CONCURRENCY
SETTLED = {"completed", "cancelled", "interrupted"}


@pytest.fixture(scope="module")
def soak_sites(django_db_setup, fake_upstream_server, tmp_path_factory) -> Iterator[tuple[list[LiveSite], dict]]:
    require_services()
    # On a busy machine a first token may take more than the tests' usual 2 s.
    environment = sites_environment(
        fake_upstream_server,
        "chatproxy-soak",
        OPENAI_FIRST_TOKEN_TIMEOUT="20",
        OPENAI_IDLE_TIMEOUT="20",
        PYTHONUNBUFFERED="1",  # the killed process's log keeps its last lines
    )
    folder = tmp_path_factory.mktemp("soak")
    sites = [LiveSite(folder / f"daphne-{n}.log", environment) for n in (1, 2)]
    yield sites, environment
    for site in sites:
        site.stop()


@dataclass(frozen=True)
class Plan:
    """One stream of the soak: where it goes, and after how many lines its client hangs up (None: never)."""

    number: int
    site: int
    abort_after: int | None

    @property
    def body(self) -> dict:
        return {"messages": [{"role": "user", "content": f"Soak stream {self.number}"}]}


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    site: LiveSite
    status: int | None = None
    # The upstream's request id, when the client read the stream to its usage chunk.
    request_id: str | None = None
    aborted: bool = False
    # The stream ended before its end: the server went away.
    cut: bool = False
    # The error line the stream ended with, or the client's error when it was cut.
    error: str | None = None
    # When the client was done with it (monotonic clock).
    ended: float = field(default_factory=time.monotonic)


def plans() -> list[Plan]:
    rng = random.Random(SEED)
    return [
        Plan(
            number=n,
            site=n % 2,
            abort_after=rng.randint(1, PIECES) if rng.random() < ABORTED_SHARE else None,
        )
        for n in range(STREAMS)
    ]


class Router:
    """Which process each new stream goes to: its planned one, or the other while that one is down.
    Knows which streams are open on each process and whether they have had their first line."""

    def __init__(self, sites: list[LiveSite]) -> None:
        self.sites = list(sites)
        self.down: set[int] = set()
        self.open: list[dict[int, bool]] = [{}, {}]
        self.started = 0
        self._lock = threading.Lock()

    def enter(self, plan: Plan) -> tuple[int, LiveSite]:
        with self._lock:
            index = plan.site if plan.site not in self.down else 1 - plan.site
            self.open[index][plan.number] = False
            self.started += 1
            return index, self.sites[index]

    def first_line(self, index: int, plan: Plan) -> None:
        with self._lock:
            self.open[index][plan.number] = True

    def leave(self, index: int, plan: Plan) -> None:
        with self._lock:
            self.open[index].pop(plan.number, None)

    def take_down(self, index: int) -> None:
        with self._lock:
            self.down.add(index)

    def all_under_way(self, index: int) -> bool:
        """Whether every stream open on that process has reached the upstream and answered."""
        with self._lock:
            return all(self.open[index].values())

    def open_streams(self, index: int) -> set[int]:
        with self._lock:
            return set(self.open[index])

    def bring_up(self, index: int, site: LiveSite) -> None:
        with self._lock:
            self.sites[index] = site
            self.down.discard(index)


def run_stream(plan: Plan, router: Router, session: httpx.Client) -> Outcome:
    index, site = router.enter(plan)
    try:
        with (
            httpx.Client(base_url=site.url, cookies=session.cookies, headers=session.headers, timeout=20) as client,
            client.stream("POST", STREAM_URL, json=plan.body) as response,
        ):
            if response.status_code != 200:
                response.read()
                return Outcome(plan, site, status=response.status_code)
            chunks = []
            for line in response.iter_lines():
                if not line.strip():
                    continue
                router.first_line(index, plan)
                chunks.append(json.loads(line))
                if plan.abort_after is not None and len(chunks) >= plan.abort_after:
                    return Outcome(plan, site, status=200, aborted=True)
        if chunks and "error" in chunks[-1]:
            return Outcome(plan, site, status=200, error=chunks[-1]["error"]["message"])
        if chunks and chunks[-1].get("usage"):
            return Outcome(plan, site, status=200, request_id=f"req_{chunks[0]['id'][-12:]}")
        return Outcome(plan, site, status=200, cut=True)
    except httpx.HTTPError as error:
        return Outcome(plan, site, cut=True, error=repr(error))
    finally:
        router.leave(index, plan)


@pytest.fixture
def soak_session(soak_sites, user) -> Iterator[httpx.Client]:
    """The user's session on the site (its cookies and CSRF header serve every process)."""
    client = logged_in_client(soak_sites[0][0], user)
    yield client
    client.close()


def test_a_thousand_streams_with_aborts_and_a_crash_leave_one_settled_row_per_upstream_request(
    soak_sites, soak_session, tmp_path: Path, fake_upstream, user, record_property
):
    sites, environment = soak_sites
    UsageLimit.objects.create(
        user=user,
        requests_per_minute=0,
        concurrent_streams=SLOTS,
        daily_token_budget=AMPLE_TOKEN_BUDGET,
        monthly_token_budget=AMPLE_TOKEN_BUDGET,
    )
    fake_upstream.default_reply = Reply(pieces=["soak "] * PIECES, delay=PIECE_DELAY)
    router = Router(sites)
    began = time.monotonic()

    with ThreadPoolExecutor(max_workers=CONCURRENCY) as pool:
        futures = [pool.submit(run_stream, plan, router, soak_session) for plan in plans()]
        wait_until(lambda: router.started >= STREAMS // 2, 120, "half the streams have started")
        # New streams go to the other process; once every stream open on this one has reached the
        # upstream (so each has a row and an upstream request), it dies mid-stream.
        doomed = sites[0]
        router.take_down(0)
        wait_until(lambda: router.all_under_way(0), 10, "the doomed process's open streams are under way")
        open_at_kill = router.open_streams(0)
        os.kill(doomed.process.pid, signal.SIGKILL)
        killed_at = timezone.now()
        killed = time.monotonic()
        doomed.process.wait(10)
        restarted = LiveSite(tmp_path / "daphne-restarted.log", environment)
        sites[0] = restarted  # the fixture stops it
        doomed.stop()
        router.bring_up(0, restarted)
        outcomes = [future.result(timeout=120) for future in futures]
    soaked = time.monotonic() - began

    assert open_at_kill, "the kill should catch streams mid-way"
    cut = [outcome for outcome in outcomes if outcome.cut]
    assert [outcome for outcome in outcomes if not outcome.cut and (outcome.status != 200 or outcome.error)] == []
    assert all(outcome.site is doomed for outcome in cut), "only the killed process's streams should be cut"
    assert any(outcome.site is restarted and outcome.request_id for outcome in outcomes), "the restart should serve"
    cut_but_not_open = [
        (outcome.plan.number, round(outcome.ended - killed, 3), outcome.error)
        for outcome in cut
        if outcome.plan.number not in open_at_kill
    ]
    assert cut_but_not_open == [], "streams cut that were not open at the kill (number, seconds after the kill, error)"

    # Every client is done and the killed process is dead: what is still in progress after the
    # living processes have settled their last streams is the dead process's.
    in_progress = UsageLog.objects.filter(user=user, status=UsageLog.Status.IN_PROGRESS)
    _wait_until_steady(lambda: in_progress.count())
    orphans = in_progress.count()
    # Not one per cut stream: a process may have settled a stream whose last bytes it had not sent
    # yet, or not yet settled one whose client had read it all.
    assert orphans > 0, "the killed process's open streams should have left rows in progress"
    assert not in_progress.filter(created_at__gt=killed_at).exists(), "a living process left a row in progress"
    swept_at = time.monotonic()
    assert sweep_every_open_row() == f"{orphans} usage row{'' if orphans == 1 else 's'} settled as interrupted."
    swept = time.monotonic() - swept_at

    rows = list(UsageLog.objects.filter(user=user).values("status", "upstream_request_id", "total_tokens"))
    upstream_prompts = Counter(request.json()["messages"][-1]["content"] for request in fake_upstream.requests)
    assert all(count == 1 for count in upstream_prompts.values()), "a stream reached the upstream twice"
    # Each stream reached the upstream once (the kill waited until the doomed process's streams
    # were under way, and new ones went elsewhere): each has exactly one row.
    assert len(rows) == len(fake_upstream.requests) == STREAMS
    statuses_seen = Counter(row["status"] for row in rows)
    assert set(statuses_seen) <= SETTLED, statuses_seen
    assert statuses_seen["interrupted"] == orphans
    assert 0 < statuses_seen["cancelled"] <= sum(1 for outcome in outcomes if outcome.aborted)
    request_ids = [row["upstream_request_id"] for row in rows if row["upstream_request_id"]]
    assert len(request_ids) == len(set(request_ids)), "a request has two rows"
    assert all(row["upstream_request_id"] for row in rows if row["status"] != "interrupted")
    read_to_the_end = {outcome.request_id for outcome in outcomes if outcome.request_id}
    assert read_to_the_end <= set(request_ids)

    # Every reservation is released: the budget counts what the rows used, nothing more.
    used = sum(row["total_tokens"] for row in rows)
    spent = spending(user.pk)
    assert (spent.tokens_today, spent.tokens_this_month) == (used, used)

    # Every concurrency slot is free: the user can open as many streams at once as the limit allows.
    fake_upstream.default_reply = Reply(pieces=["burst "] * 10, delay=0.2)
    clients = [logged_in_client(site, user) for site in sites]
    try:
        burst = statuses(fire_across(clients, SLOTS))
    finally:
        for client in clients:
            client.close()
    total = time.monotonic() - began
    record_property("soak_seconds", round(soaked, 1))
    record_property("sweep_seconds", round(swept, 2))
    print(f"\nsoak: {STREAMS} streams in {soaked:.1f} s; sweep of {orphans} rows {swept:.2f} s; all {total:.1f} s")
    refused = burst.count(429)
    assert burst == [200] * SLOTS, (
        f"{refused} of {SLOTS} simultaneous streams refused after the sweep: the concurrency slots of the "
        f"killed process's streams ({orphans} swept) are still taken"
    )


def _wait_until_steady(count: Callable[[], int], timeout: float = 15.0, quiet: float = 1.0) -> None:
    """Wait until `count()` has not changed for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = count(), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the usage rows kept changing"
        time.sleep(0.1)
        now = count()
        if now != last:
            last, since = now, time.monotonic()

"""The workloads, each run against the relay and, with the same concurrency, straight at the upstream.

A run sends every stream's request through a `Target` (the proxy, or the upstream directly),
reads the CPU time of the processes involved before and after, and turns what the clients
received into `RunMetrics`. Each run also verifies every stream's text (see transcript.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields

import orjson

from bench.answers import MODEL, StreamSpec
from bench.http_client import ConnectionSlot, Exchange, HttpConnection, build_request
from bench.processes import busy_seconds_per_cpu, cpu_seconds, rss_bytes
from bench.site import Session
from bench.transcript import CHAT, RESPONSES, Transcript, read_transcript, verification_problems

# "Keeps pace": p99 time to first byte under this, and every stream done within this factor of its schedule.
TTFB_LIMIT_SECONDS = 1.0
PACE_TOLERANCE = 1.2
# The load generator and upstream share one CPU; at this share of it they may be what limits the proxy.
HARNESS_BUSY_LIMIT = 0.9
# A CPU-bound proxy measurement means something only if the harness alone goes clearly faster.
HARNESS_HEADROOM = 1.5
CONNECT_CONCURRENCY = 64
# CPU shares and CPU per chunk are left out for runs shorter than this (clock-tick resolution).
MIN_CPU_WINDOW_SECONDS = 0.5


# Target names, also the keys of each workload's results in the JSON.
DIRECT = "direct"
PROXY = "proxy"
PROXY_V1 = "proxy_v1"
PROXY_SAVED = "proxy_saved"
DIRECT_RESPONSES = "direct_responses"
PROXY_RESPONSES = "proxy_responses"
RESPONSES_TARGETS = (DIRECT_RESPONSES, PROXY_RESPONSES)
# The targets that answer in NDJSON (the page's APIs); the others speak OpenAI's SSE.
NDJSON_TARGETS = (PROXY, PROXY_SAVED, PROXY_RESPONSES)


@dataclass(frozen=True)
class Target:
    """Where a workload's requests go.

    Chat completions: "direct": the upstream itself (SSE, its API key). "proxy": the page's API,
    `/api/chat/stream`, as the chat page calls it (session cookie and CSRF header, NDJSON).
    "proxy_v1": the site's OpenAI-compatible `/v1/chat/completions`, as an SDK calls it (a personal
    key as a bearer token, SSE); the same relay, so the difference between the two proxy rows is
    what each front costs. "proxy_saved": the page's API as the chat page calls it with saving on,
    each request starting a saved conversation (`"conversation": "new"`): the conversation, the
    user's message and the answer written beside the usage row.

    The Responses API: "direct_responses": the upstream's `/v1/responses` (SSE, `event: <type>`);
    "proxy_responses": the page's `/api/responses/stream` (session and CSRF, one event a line).
    """

    name: str
    port: int
    api_key: str = ""
    sessions: tuple[Session, ...] = ()
    # The users' personal API keys, for "proxy_v1" (user i sends keys[i % len(keys)]).
    api_keys: tuple[str, ...] = ()

    @property
    def sse(self) -> bool:
        return self.name not in NDJSON_TARGETS

    @property
    def api(self) -> str:
        """The API the stream speaks, for its verification: "chat" or "responses"."""
        return RESPONSES if self.name in RESPONSES_TARGETS else CHAT

    @property
    def is_proxy(self) -> bool:
        return self.name not in (DIRECT, DIRECT_RESPONSES)

    def request(self, spec: StreamSpec, user_index: int) -> bytes:
        host = f"127.0.0.1:{self.port}"
        if self.name in NDJSON_TARGETS:
            session = self.sessions[user_index % len(self.sessions)]
            headers = {
                "Cookie": session.cookie_header,
                "X-CSRFToken": session.csrf_token,
                "Content-Type": "application/json",
                "Accept": "application/x-ndjson",
            }
            if self.name == PROXY_RESPONSES:
                body = orjson.dumps({"model": MODEL, "input": spec.prompt()})
                return build_request("POST", "/api/responses/stream", host, headers, body)
            chat: dict[str, object] = {"model": MODEL, "messages": [{"role": "user", "content": spec.prompt()}]}
            if self.name == PROXY_SAVED:
                chat["conversation"] = "new"
            return build_request("POST", "/api/chat/stream", host, headers, orjson.dumps(chat))
        api_key = self.api_keys[user_index % len(self.api_keys)] if self.name == PROXY_V1 else self.api_key
        headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        if self.name == DIRECT_RESPONSES:
            body = orjson.dumps({"model": MODEL, "input": spec.prompt(), "stream": True})
            return build_request("POST", "/v1/responses", host, headers, body)
        # The upstream and /v1 get the same OpenAI request; without include_usage /v1 would keep
        # the usage chunk to itself, and the transcripts would not be comparable.
        body = orjson.dumps(
            {
                "model": MODEL,
                "messages": [{"role": "user", "content": spec.prompt()}],
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        return build_request("POST", "/v1/chat/completions", host, headers, body)


@dataclass(frozen=True)
class Probes:
    """The processes whose CPU time and memory the measurements read, and the CPUs they are pinned to."""

    upstream_pid: int
    server_pid: int | None
    server_cpu: int | None = None
    harness_cpu: int | None = None

    @property
    def harness_shares_one_cpu(self) -> bool:
        return self.harness_cpu is not None


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    server: float
    upstream: float
    load_generator: float
    # Busy seconds of each CPU (all processes), to tell how much other processes took on the machine.
    cpu_busy: dict[int, float]

    @classmethod
    def take(cls, probes: Probes) -> CpuSnapshot:
        return cls(
            wall=time.monotonic(),
            server=cpu_seconds(probes.server_pid) if probes.server_pid else 0.0,
            upstream=cpu_seconds(probes.upstream_pid),
            load_generator=cpu_seconds(os.getpid()),
            cpu_busy=busy_seconds_per_cpu(),
        )


@dataclass
class StreamOutcome:
    spec: StreamSpec
    exchange: Exchange
    transcript: Transcript
    problems: list[str]

    @property
    def ttfb(self) -> float | None:
        return _since(self.exchange.first_byte_at, self.exchange.sent_at)

    @property
    def ttft(self) -> float | None:
        return _since(self.transcript.first_content_at, self.exchange.sent_at)

    @property
    def duration(self) -> float | None:
        return _since(self.exchange.ended_at, self.exchange.sent_at)

    @property
    def server_timing(self) -> dict[str, float]:
        return server_timing(self.exchange.header("server-timing"))


def server_timing(header: str | None) -> dict[str, float]:
    """A Server-Timing header's durations by metric name, in seconds (`auth;dur=0.41;desc="…", …`)."""
    durations = {}
    for metric in (header or "").split(","):
        name, *parameters = (part.strip() for part in metric.split(";"))
        for parameter in parameters:
            key, _, value = parameter.partition("=")
            if key == "dur" and name:
                durations[name] = float(value) / 1000
    return durations


def _since(moment: float | None, start: float) -> float | None:
    return None if moment is None else moment - start


def percentile(values: Sequence[float], percent: float) -> float | None:
    """Nearest-rank percentile (p99 of 50 values is the largest)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * percent // 100))
    return ordered[int(rank) - 1]


@dataclass
class RunMetrics:
    """What one run of one workload against one target measured. Times in seconds."""

    target: str
    streams: int = 0
    failed_streams: int = 0
    problems: list[str] = field(default_factory=list)
    ttfb_p50: float | None = None
    ttfb_p99: float | None = None
    ttft_p50: float | None = None
    ttft_p99: float | None = None
    duration_p50: float | None = None
    duration_p99: float | None = None
    # Streams that took longer than PACE_TOLERANCE × their schedule (paced workloads only).
    late_streams: int = 0
    largest_gap_p99: float | None = None
    content_chunks: int = 0
    wall_seconds: float = 0.0
    chunks_per_second: float = 0.0
    requests_per_second: float = 0.0
    server_cpu_seconds: float = 0.0
    server_cpu_ms_per_request: float | None = None
    server_cpu_us_per_chunk: float | None = None
    server_cpu_share: float | None = None
    upstream_cpu_us_per_chunk: float | None = None
    harness_cpu_share: float | None = None
    # Share of the server's CPU and of the harness's CPU that other processes on the machine used
    # during the run (pinned runs only): noise from outside the benchmark.
    other_load_server_cpu: float | None = None
    other_load_harness_cpu: float | None = None
    paced_seconds: float | None = None
    # The proxy's own account of each request's time before its stream began (its Server-Timing
    # header): each phase's median over the run's streams, in seconds.
    server_timing_p50: dict[str, float] = field(default_factory=dict)

    @property
    def keeps_pace(self) -> bool:
        return (
            self.failed_streams == 0
            and self.ttfb_p99 is not None
            and self.ttfb_p99 < TTFB_LIMIT_SECONDS
            and self.late_streams == 0
        )

    def pace_failure(self) -> str:
        reasons = []
        if self.failed_streams:
            reasons.append(f"{self.failed_streams} failed")
        if self.ttfb_p99 is None or self.ttfb_p99 >= TTFB_LIMIT_SECONDS:
            reasons.append(f"TTFB p99 {_ms(self.ttfb_p99)} ms")
        if self.late_streams:
            reasons.append(f"{self.late_streams}/{self.streams} streams late (p99 {self.duration_p99 or 0:.2f} s)")
        return ", ".join(reasons)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f}"


def summarize(
    target: Target,
    outcomes: list[StreamOutcome],
    before: CpuSnapshot,
    after: CpuSnapshot,
    probes: Probes,
    paced: bool = False,
) -> RunMetrics:
    completed = [o for o in outcomes if not o.problems]
    ttfbs = [o.ttfb for o in completed if o.ttfb is not None]
    ttfts = [o.ttft for o in completed if o.ttft is not None]
    durations = [o.duration for o in completed if o.duration is not None and o.exchange.aborted_at is None]
    gaps = [o.transcript.largest_gap for o in completed if o.transcript.largest_gap is not None]
    chunks = sum(len(o.transcript.content_times) for o in outcomes)
    starts = [o.exchange.sent_at for o in outcomes if o.exchange.sent_at]
    ends = [o.exchange.ended_at or o.exchange.aborted_at for o in outcomes]
    wall = max((e for e in ends if e), default=0.0) - min(starts, default=0.0) if starts else 0.0
    window = max(after.wall - before.wall, 1e-9)
    # CPU times count in clock ticks (10 ms): over a shorter run they say nothing.
    cpu_readable = window >= MIN_CPU_WINDOW_SECONDS
    server_cpu = after.server - before.server
    upstream_cpu = after.upstream - before.upstream
    load_generator_cpu = after.load_generator - before.load_generator
    harness_share = None
    if cpu_readable and probes.harness_shares_one_cpu:
        harness_share = (upstream_cpu + load_generator_cpu) / window
    elif cpu_readable:
        harness_share = max(upstream_cpu, load_generator_cpu) / window
    measured_server = cpu_readable and probes.server_pid is not None
    other_server = other_harness = None
    if cpu_readable and probes.server_cpu is not None and probes.harness_cpu is not None:
        busy = {cpu: after.cpu_busy.get(cpu, 0.0) - before.cpu_busy.get(cpu, 0.0) for cpu in after.cpu_busy}
        other_server = max(0.0, busy.get(probes.server_cpu, 0.0) - (server_cpu if probes.server_pid else 0.0)) / window
        other_harness = max(0.0, busy.get(probes.harness_cpu, 0.0) - upstream_cpu - load_generator_cpu) / window
    paced_limit = None
    late = 0
    if paced and outcomes:
        paced_limit = outcomes[0].spec.paced_seconds
        late = sum(1 for d in durations if d > paced_limit * PACE_TOLERANCE)
    problems = [f"{o.spec.tag}: {p}" for o in outcomes for p in o.problems]
    phases: dict[str, list[float]] = {}
    for outcome in completed:
        for name, seconds in outcome.server_timing.items():
            phases.setdefault(name, []).append(seconds)
    return RunMetrics(
        target=target.name,
        streams=len(outcomes),
        failed_streams=sum(1 for o in outcomes if o.problems),
        problems=problems[:5],
        ttfb_p50=percentile(ttfbs, 50),
        ttfb_p99=percentile(ttfbs, 99),
        ttft_p50=percentile(ttfts, 50),
        ttft_p99=percentile(ttfts, 99),
        duration_p50=percentile(durations, 50),
        duration_p99=percentile(durations, 99),
        late_streams=late,
        largest_gap_p99=percentile(gaps, 99),
        content_chunks=chunks,
        wall_seconds=wall,
        chunks_per_second=chunks / wall if wall > 0 else 0.0,
        requests_per_second=len(outcomes) / wall if wall > 0 else 0.0,
        server_cpu_seconds=server_cpu if probes.server_pid else 0.0,
        server_cpu_ms_per_request=server_cpu * 1e3 / len(outcomes) if measured_server and outcomes else None,
        server_cpu_us_per_chunk=server_cpu * 1e6 / chunks if measured_server and chunks else None,
        server_cpu_share=server_cpu / window if measured_server else None,
        upstream_cpu_us_per_chunk=upstream_cpu * 1e6 / chunks if cpu_readable and chunks else None,
        harness_cpu_share=harness_share,
        other_load_server_cpu=other_server,
        other_load_harness_cpu=other_harness,
        paced_seconds=paced_limit,
        server_timing_p50={name: statistics.median(values) for name, values in phases.items()},
    )


def median_metrics(runs: list[RunMetrics]) -> RunMetrics:
    """Field-by-field medians of repeated runs; failures are summed, problems kept."""
    if len(runs) == 1:
        return runs[0]
    merged = RunMetrics(target=runs[0].target)
    for spec in fields(RunMetrics):
        values = [getattr(run, spec.name) for run in runs]
        if spec.name in ("target",):
            continue
        if spec.name == "problems":
            merged.problems = [p for run in runs for p in run.problems][:5]
        elif spec.name == "failed_streams":
            merged.failed_streams = sum(values)
        elif spec.name == "server_timing_p50":
            names = {name for run in runs for name in run.server_timing_p50}
            merged.server_timing_p50 = {
                name: statistics.median(run.server_timing_p50[name] for run in runs if name in run.server_timing_p50)
                for name in names
            }
        elif all(isinstance(v, (int, float)) for v in values):
            middle = statistics.median(values)
            setattr(
                merged,
                spec.name,
                type(values[0])(middle) if isinstance(values[0], int) else middle,
            )
        else:
            present = [v for v in values if v is not None]
            setattr(merged, spec.name, statistics.median(present) if present else None)
    return merged


def metrics_dict(metrics: RunMetrics) -> dict:
    return {**asdict(metrics), "keeps_pace": metrics.keeps_pace}


# --- running streams ----------------------------------------------------------------------------


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection while streams are measured: a full pass over the received pieces of
    hundreds of streams stalls the load generator for tens of milliseconds, which would show up
    as gaps in every stream."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _outcome(spec: StreamSpec, exchange: Exchange, target: Target) -> StreamOutcome:
    transcript = read_transcript(exchange)
    return StreamOutcome(
        spec,
        exchange,
        transcript,
        verification_problems(spec, exchange, transcript, target.sse, target.api),
    )


async def _connect_all(slots: list[ConnectionSlot]) -> None:
    """Open every connection before the clock starts (a burst of connects is not the workload)."""
    limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

    async def connect(slot: ConnectionSlot) -> None:
        # A failed connect is retried, and counted if it fails again, when the stream starts.
        async with limit:
            with contextlib.suppress(OSError, TimeoutError):
                await slot.connect()

    await asyncio.gather(*(connect(slot) for slot in slots))


def _stream_timeout(spec: StreamSpec) -> float:
    return spec.paced_seconds * 3 + 30


async def run_streams(
    target: Target,
    probes: Probes,
    plan: list[list[StreamSpec]],
    stagger_seconds: float = 0.0,
    paced: bool = False,
) -> RunMetrics:
    """Virtual user i starts at i/len(plan) × stagger and runs its specs back to back on one connection."""
    slots = [ConnectionSlot("127.0.0.1", target.port) for _ in plan]
    await _connect_all(slots)
    results: list[tuple[StreamSpec, Exchange]] = []

    async def virtual_user(index: int, specs: list[StreamSpec]) -> None:
        await asyncio.sleep(stagger_seconds * index / len(plan))
        for spec in specs:
            exchange = await slots[index].exchange(target.request(spec, index), _stream_timeout(spec))
            results.append((spec, exchange))

    longest = max((sum(_stream_timeout(spec) for spec in specs) for specs in plan), default=0.0)
    with collector_paused():
        before = CpuSnapshot.take(probes)
        try:
            async with asyncio.timeout(stagger_seconds + longest + 10):
                await asyncio.gather(*(virtual_user(i, specs) for i, specs in enumerate(plan)))
        finally:
            after = CpuSnapshot.take(probes)
            for slot in slots:
                slot.close()
    outcomes = [_outcome(spec, exchange, target) for spec, exchange in results]
    return summarize(target, outcomes, before, after, probes, paced=paced)


async def sequential(target: Target, probes: Probes, requests: int, chunks: int) -> RunMetrics:
    """Latency at concurrency 1: one connection, one request after another."""
    return await run_streams(target, probes, [[StreamSpec.new(chunks, 0) for _ in range(requests)]])


async def paced_level(
    target: Target,
    probes: Probes,
    concurrency: int,
    rounds: int,
    chunks: int,
    delay_ms: float,
) -> RunMetrics:
    """`concurrency` streams open at once in steady state: users start spread over one stream's duration."""
    plan = [[StreamSpec.new(chunks, delay_ms) for _ in range(rounds)] for _ in range(concurrency)]
    return await run_streams(target, probes, plan, stagger_seconds=chunks * delay_ms / 1000, paced=True)


async def cpu_bound(target: Target, probes: Probes, concurrency: int, rounds: int, chunks: int) -> RunMetrics:
    plan = [[StreamSpec.new(chunks, 0) for _ in range(rounds)] for _ in range(concurrency)]
    return await run_streams(target, probes, plan)


# --- memory per open stream ---------------------------------------------------------------------


@dataclass
class MemoryMetrics:
    streams: int
    open_together: int
    idle_rss_bytes: int
    loaded_rss_bytes: int
    failed_streams: int
    problems: list[str]

    @property
    def bytes_per_stream(self) -> float | None:
        if not self.open_together:
            return None
        return (self.loaded_rss_bytes - self.idle_rss_bytes) / self.open_together


async def memory_per_stream(
    target: Target, server_pid: int, streams: int, chunks: int, delay_ms: float
) -> MemoryMetrics:
    """Server RSS with `streams` streams open at once, minus its idle RSS just before."""
    slots = [ConnectionSlot("127.0.0.1", target.port) for _ in range(streams)]
    await _connect_all(slots)
    await asyncio.sleep(0.2)
    idle = rss_bytes(server_pid)
    specs = [StreamSpec.new(chunks, delay_ms) for _ in range(streams)]
    sent: list[tuple[StreamSpec, Exchange, asyncio.Future[Exchange]]] = []
    for index, (slot, spec) in enumerate(zip(slots, specs, strict=True)):
        await slot.connect()
        assert slot.connection is not None
        exchange, done = slot.connection.send(target.request(spec, index))
        sent.append((spec, exchange, done))
    peak_open, loaded = 0, idle
    deadline = time.monotonic() + _stream_timeout(specs[0])
    try:
        while time.monotonic() < deadline and not all(done.done() for _, _, done in sent):
            open_now = sum(1 for _, exchange, done in sent if exchange.first_byte_at and not done.done())
            rss = rss_bytes(server_pid)
            # The RSS that counts is the one with the most streams open at once (ideally all of them).
            if open_now > peak_open or (open_now == peak_open and rss > loaded):
                peak_open, loaded = open_now, rss
            await asyncio.sleep(0.05)
    finally:
        for slot in slots:
            slot.close()
    outcomes = [_outcome(spec, exchange, target) for spec, exchange, _ in sent]
    problems = [f"{o.spec.tag}: {p}" for o in outcomes for p in o.problems]
    return MemoryMetrics(
        streams,
        peak_open,
        idle,
        loaded,
        sum(1 for o in outcomes if o.problems),
        problems[:5],
    )


# --- client aborts ------------------------------------------------------------------------------


@dataclass
class AbortMetrics:
    target: str
    aborts: int
    # Seconds from the client closing its socket to the upstream seeing its connection closed.
    close_delays: list[float]
    # Content chunks the upstream sent after the client had closed (per abort).
    chunks_after_close: list[int]
    # Aborts after which the upstream never saw a close: it sent the whole answer.
    never_closed: int
    failed_streams: int
    problems: list[str]

    def as_dict(self) -> dict:
        return {
            "target": self.target,
            "aborts": self.aborts,
            "close_delay_p50": percentile(self.close_delays, 50),
            "close_delay_p99": percentile(self.close_delays, 99),
            "chunks_after_close_p50": percentile(self.chunks_after_close, 50),
            "chunks_after_close_max": max(self.chunks_after_close, default=None),
            "never_closed": self.never_closed,
            "failed_streams": self.failed_streams,
            "problems": self.problems,
        }


async def upstream_records(upstream_port: int) -> dict:
    """Take the upstream's records of ended streams (and the tags of open ones)."""
    slot = ConnectionSlot("127.0.0.1", upstream_port)
    try:
        exchange = await slot.exchange(build_request("GET", "/bench/streams", f"127.0.0.1:{upstream_port}", {}), 30)
    finally:
        slot.close()
    if exchange.status != 200:
        raise RuntimeError(f"the upstream's stats endpoint answered {exchange.status} {exchange.error or ''}")
    return orjson.loads(exchange.body)


async def client_aborts(
    target: Target,
    upstream_port: int,
    aborts: int,
    chunks: int,
    delay_ms: float,
    abort_after_seconds: float,
) -> AbortMetrics:
    """Start a paced stream, hang up `abort_after_seconds` after its first byte; `aborts` times in a row."""
    await upstream_records(upstream_port)  # forget earlier streams
    outcomes: list[StreamOutcome] = []
    for index in range(aborts):
        spec = StreamSpec.new(chunks, delay_ms, trace=True)
        connection = await HttpConnection.open("127.0.0.1", target.port)
        exchange, done = connection.send(target.request(spec, index))
        deadline = time.monotonic() + 10
        while exchange.first_byte_at is None and not done.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if not done.done():
            await asyncio.sleep(abort_after_seconds)
        if not done.done():
            connection.abort_exchange()
        else:
            connection.close()
            if exchange.error is None:
                exchange.error = "the stream ended before the client could abort it"
        outcomes.append(_outcome(spec, exchange, target))
    records: dict[str, dict] = {}
    tags = {o.spec.tag for o in outcomes}
    deadline = time.monotonic() + chunks * delay_ms / 1000 + 15
    while time.monotonic() < deadline:
        taken = await upstream_records(upstream_port)
        records.update({r["tag"]: r for r in taken["ended"] if r["tag"] in tags})
        if tags <= records.keys():
            break
        await asyncio.sleep(0.1)
    delays: list[float] = []
    after: list[int] = []
    never_closed = 0
    problems = [f"{o.spec.tag}: {p}" for o in outcomes for p in o.problems]
    for outcome in outcomes:
        record = records.get(outcome.spec.tag)
        aborted_at = outcome.exchange.aborted_at
        if record is None or aborted_at is None:
            problems.append(f"{outcome.spec.tag}: no upstream record or no abort")
            continue
        sent_times = record["sent_times"] or []
        after.append(sum(1 for sent in sent_times if sent > aborted_at))
        if record["client_closed"] is None:
            never_closed += 1
        else:
            delays.append(max(0.0, record["client_closed"] - aborted_at))
    return AbortMetrics(
        target=target.name,
        aborts=len(outcomes),
        close_delays=delays,
        chunks_after_close=after,
        never_closed=never_closed,
        failed_streams=sum(1 for o in outcomes if o.problems),
        problems=problems[:5],
    )

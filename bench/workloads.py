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
import random
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
# A soak shorter than this gets no verdict: its second half is too short for a slope to mean anything.
MIN_SOAK_VERDICT_SECONDS = 60
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

    `more_ports`: further server processes of the same site (the two-process comparison); virtual
    user i talks to `ports[i % len(ports)]`, so users alternate between the processes.
    """

    name: str
    port: int
    api_key: str = ""
    sessions: tuple[Session, ...] = ()
    # The users' personal API keys, for "proxy_v1" (user i sends keys[i % len(keys)]).
    api_keys: tuple[str, ...] = ()
    more_ports: tuple[int, ...] = ()

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, *self.more_ports)

    def port_for(self, user_index: int) -> int:
        return self.ports[user_index % len(self.ports)]

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
        host = f"127.0.0.1:{self.port_for(user_index)}"
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
    """The processes whose CPU time and memory the measurements read, and the CPUs they are pinned to.

    `more_server_pids`: the other server processes of a multi-process run; the server's CPU time is
    then the sum over all of them (and each one's is kept too)."""

    upstream_pid: int
    server_pid: int | None
    server_cpu: int | None = None
    harness_cpu: int | None = None
    more_server_pids: tuple[int, ...] = ()

    @property
    def harness_shares_one_cpu(self) -> bool:
        return self.harness_cpu is not None

    @property
    def server_pids(self) -> tuple[int, ...]:
        return (self.server_pid, *self.more_server_pids) if self.server_pid else ()


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    # CPU seconds of each server process (in `Probes.server_pids` order).
    servers: tuple[float, ...]
    upstream: float
    load_generator: float
    # Busy seconds of each CPU (all processes), to tell how much other processes took on the machine.
    cpu_busy: dict[int, float]

    @property
    def server(self) -> float:
        return sum(self.servers)

    @classmethod
    def take(cls, probes: Probes) -> CpuSnapshot:
        return cls(
            wall=time.monotonic(),
            servers=tuple(cpu_seconds(pid) for pid in probes.server_pids),
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
    # Each server process's CPU / wall time (one entry, or one per process in a multi-process run).
    server_cpu_shares: list[float] = field(default_factory=list)
    upstream_cpu_us_per_chunk: float | None = None
    harness_cpu_share: float | None = None
    # Upstream + load generator CPU / wall time whatever the pinning (100% = one core): how much of
    # the machine the harness took, when it shares the CPUs with the servers.
    harness_cpu_total_share: float | None = None
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
        server_cpu_shares=(
            [(a - b) / window for a, b in zip(after.servers, before.servers, strict=True)] if measured_server else []
        ),
        upstream_cpu_us_per_chunk=upstream_cpu * 1e6 / chunks if cpu_readable and chunks else None,
        harness_cpu_share=harness_share,
        harness_cpu_total_share=(upstream_cpu + load_generator_cpu) / window if cpu_readable else None,
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
        elif spec.name == "server_cpu_shares":
            lengths = {len(run.server_cpu_shares) for run in runs}
            merged.server_cpu_shares = (
                [statistics.median(shares) for shares in zip(*values, strict=True)] if len(lengths) == 1 else []
            )
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
    slots = [ConnectionSlot("127.0.0.1", target.port_for(index)) for index in range(len(plan))]
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
    # From the first request to the moment the most streams were open (how long starting them took).
    seconds_to_peak: float = 0.0

    @property
    def bytes_per_stream(self) -> float | None:
        if not self.open_together:
            return None
        return (self.loaded_rss_bytes - self.idle_rss_bytes) / self.open_together


async def memory_per_stream(
    target: Target,
    server_pid: int,
    streams: int,
    chunks: int,
    delay_ms: float,
    start_concurrency: int = CONNECT_CONCURRENCY,
) -> MemoryMetrics:
    """Server RSS with `streams` streams open at once, minus its idle RSS just before.

    Connections are opened, then requests started, at most `start_concurrency` at a time (a start
    holds its place until its first response byte): a burst of thousands of requests would only
    measure the server's accept queue and time out, and the streams must be long enough (the caller
    sizes `chunks`) for the last one to start before the first ones end.
    """
    slots = [ConnectionSlot("127.0.0.1", target.port) for _ in range(streams)]
    await _connect_all(slots)
    await asyncio.sleep(0.2)
    idle = rss_bytes(server_pid)
    specs = [StreamSpec.new(chunks, delay_ms) for _ in range(streams)]
    sent: list[tuple[StreamSpec, Exchange, asyncio.Future[Exchange] | None]] = []
    starting = asyncio.Semaphore(start_concurrency)

    async def start(index: int, slot: ConnectionSlot, spec: StreamSpec) -> None:
        async with starting:
            try:
                await slot.connect()  # again if the first connect failed
            except (OSError, TimeoutError) as exc:
                sent.append((spec, Exchange(sent_at=time.monotonic(), error=f"connect failed: {exc!r}"), None))
                return
            assert slot.connection is not None
            exchange, done = slot.connection.send(target.request(spec, index))
            sent.append((spec, exchange, done))
            deadline = time.monotonic() + 30
            while exchange.first_byte_at is None and not done.done() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)

    peak_open, loaded, peak_at = 0, idle, 0.0
    first_sent = time.monotonic()
    starts = asyncio.ensure_future(
        asyncio.gather(*(start(index, slot, spec) for index, (slot, spec) in enumerate(zip(slots, specs, strict=True))))
    )
    # Each start waits at most 30 s for its first byte, `start_concurrency` at a time.
    deadline = time.monotonic() + 30 * (streams / start_concurrency + 1) + _stream_timeout(specs[0])
    try:
        while time.monotonic() < deadline and not (
            starts.done() and all(done is None or done.done() for _, _, done in sent)
        ):
            open_now = sum(
                1 for _, exchange, done in sent if done is not None and exchange.first_byte_at and not done.done()
            )
            rss = rss_bytes(server_pid)
            # The RSS that counts is the one with the most streams open at once (ideally all of them).
            if open_now > peak_open or (open_now == peak_open and rss > loaded):
                if open_now > peak_open:
                    peak_at = time.monotonic() - first_sent
                peak_open, loaded = open_now, rss
            await asyncio.sleep(0.05)
    finally:
        starts.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starts
        for slot in slots:
            slot.close()
    outcomes = [_outcome(spec, exchange, target) for spec, exchange, _ in sent]
    problems = [f"{o.spec.tag}: {p}" for o in outcomes for p in o.problems]
    return MemoryMetrics(
        streams,
        peak_open,
        idle,
        loaded,
        sum(1 for o in outcomes if o.problems) + streams - len(outcomes),
        problems[:5],
        peak_at,
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


# --- soak ---------------------------------------------------------------------------------------


@dataclass
class SoakMetrics:
    """A long run of `streams` streams kept open, some aborted by their client: does the server's RSS settle?"""

    seconds: float
    streams: int
    abort_share: float
    idle_rss_bytes: int
    # (seconds since the streams started, server RSS in bytes), every `sample_seconds`.
    samples: list[tuple[float, int]]
    # The users start spread over this many seconds (one mean stream); "start" RSS is the first sample after.
    ramp_seconds: float
    completed: int
    aborted: int
    failed_streams: int
    problems: list[str]
    flat_limit_kib_per_minute: float

    @property
    def started(self) -> int:
        return self.completed + self.aborted + self.failed_streams

    @property
    def slope_kib_per_minute(self) -> float | None:
        """Least-squares slope of RSS over the second half of the run (the first half holds the warm-up
        and the allocator reaching its working size), in KiB per minute; None with fewer than 3 samples."""
        half = self.seconds / 2
        points = [(t, rss) for t, rss in self.samples if t >= half]
        if len(points) < 3:
            return None
        mean_t = statistics.fmean(t for t, _ in points)
        mean_rss = statistics.fmean(rss for _, rss in points)
        spread = sum((t - mean_t) ** 2 for t, _ in points)
        if spread <= 0:
            return None
        slope = sum((t - mean_t) * (rss - mean_rss) for t, rss in points) / spread
        return slope * 60 / 1024

    @property
    def verdict(self) -> str:
        slope = self.slope_kib_per_minute
        if slope is None or self.seconds < MIN_SOAK_VERDICT_SECONDS:
            return f"too short to judge (under {MIN_SOAK_VERDICT_SECONDS} s)"
        if abs(slope) <= self.flat_limit_kib_per_minute:
            return "flat"
        return "growing" if slope > 0 else "shrinking"

    def as_dict(self) -> dict:
        rss = [value for _, value in self.samples]
        start = next((value for t, value in self.samples if t >= self.ramp_seconds), None)
        return {
            **asdict(self),
            "started": self.started,
            "start_rss_bytes": start,
            "end_rss_bytes": rss[-1] if rss else None,
            "max_rss_bytes": max(rss, default=None),
            "slope_kib_per_minute": self.slope_kib_per_minute,
            "verdict": self.verdict,
        }


async def _soak_exchange(slot: ConnectionSlot, request: bytes, timeout: float, abort_after: float | None) -> Exchange:
    """One soak stream on the user's connection: to its end, or hung up on `abort_after` s after its first byte."""
    try:
        await slot.connect()
    except (OSError, TimeoutError) as exc:
        return Exchange(sent_at=time.monotonic(), error=f"connect failed: {exc!r}")
    connection = slot.connection
    assert connection is not None
    exchange, done = connection.send(request)
    try:
        async with asyncio.timeout(timeout):
            if abort_after is not None:
                while exchange.first_byte_at is None and not done.done():
                    await asyncio.sleep(0.01)
                await asyncio.wait({done}, timeout=abort_after)
                if not done.done():
                    connection.abort_exchange()  # the next stream reconnects
            await done
    except TimeoutError:
        exchange.error = f"no complete response within {timeout:g} s"
        slot.close()
    return exchange


async def soak(
    target: Target,
    server_pid: int,
    seconds: float,
    streams: int,
    chunk_range: tuple[int, int],
    delay_ms: float,
    abort_share: float,
    sample_seconds: float,
    seed: int,
    flat_limit_kib_per_minute: float,
) -> SoakMetrics:
    """For `seconds`, `streams` virtual users each run paced streams back to back (so that many stay
    open), `abort_share` of them hung up on at a random point; the server's RSS sampled every
    `sample_seconds`.

    Each user draws its streams from its own generator seeded with (`seed`, user), so a run is
    reproducible: its answer lengths, which streams are aborted and when. Every stream is verified
    as soon as it ends and its pieces dropped (an hour's pieces would not fit in memory); the garbage
    collector stays on, since this measures memory and not timing.
    """
    idle = rss_bytes(server_pid)
    counts = {"completed": 0, "aborted": 0, "failed": 0}
    problems: list[str] = []
    samples: list[tuple[float, int]] = []
    started_at = time.monotonic()
    stop_at = started_at + seconds

    # Users start spread over one mean stream so that their streams do not end in step.
    ramp = min(seconds / 2, sum(chunk_range) / 2 * delay_ms / 1000)

    async def user(index: int) -> None:
        rng = random.Random(f"{seed}-{index}")
        slot = ConnectionSlot("127.0.0.1", target.port_for(index))
        await asyncio.sleep(rng.uniform(0, ramp))
        try:
            while time.monotonic() < stop_at:
                spec = StreamSpec.new(rng.randint(*chunk_range), delay_ms)
                abort_after = rng.uniform(0.05, 0.95) * spec.paced_seconds if rng.random() < abort_share else None
                exchange = await _soak_exchange(slot, target.request(spec, index), _stream_timeout(spec), abort_after)
                outcome = _outcome(spec, exchange, target)
                if outcome.problems:
                    counts["failed"] += 1
                    problems.extend(
                        f"{spec.tag}: {problem}" for problem in outcome.problems[: max(0, 5 - len(problems))]
                    )
                    await asyncio.sleep(0.5)  # a failing server is not hammered in a tight loop
                elif exchange.aborted_at is not None:
                    counts["aborted"] += 1
                else:
                    counts["completed"] += 1
        finally:
            slot.close()

    async def sampler() -> None:
        for index in range(int(seconds / sample_seconds) + 1):
            await asyncio.sleep(max(0.0, started_at + index * sample_seconds - time.monotonic()))
            samples.append((time.monotonic() - started_at, rss_bytes(server_pid)))

    longest = _stream_timeout(StreamSpec("", max(chunk_range), delay_ms))
    async with asyncio.timeout(seconds + 2 * longest + 10):
        await asyncio.gather(sampler(), *(user(index) for index in range(streams)))
    return SoakMetrics(
        seconds=seconds,
        streams=streams,
        abort_share=abort_share,
        idle_rss_bytes=idle,
        samples=samples,
        ramp_seconds=ramp,
        completed=counts["completed"],
        aborted=counts["aborted"],
        failed_streams=counts["failed"],
        problems=problems[:5],
        flat_limit_kib_per_minute=flat_limit_kib_per_minute,
    )

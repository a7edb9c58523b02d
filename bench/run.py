"""Benchmark of the relay against the same workload sent straight to the upstream (issue 5).

    .venv/bin/python -m bench [--quick] [--server daphne|uvicorn|all] [--repeat N] [--processes 2]
    .venv/bin/python -m bench --soak 600 --server uvicorn    (the soak alone)

Starts the fake upstream (bench/upstream.py), migrates a throwaway SQLite database, then for each
ASGI server: starts the site, logs users in over HTTP, and runs every workload twice, through the
proxy and straight at the upstream. Prints a markdown report and writes it, with the JSON, to
bench/results/. Exit status 0 means every stream's text arrived intact; timings never fail a run.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import resource
import secrets
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.processes import (
    BASE_DIR,
    Pinning,
    ProcessSupervisor,
    free_port,
    machine_description,
    pin_this_process,
    plan_pinning,
    python_command,
    read_announced_port,
    set_process_cpus,
    wait_until_listening,
)
from bench.report import render_markdown, write_results
from bench.site import (
    SERVERS,
    Account,
    ServerKind,
    Session,
    create_api_keys,
    log_in,
    prepare_database,
    site_environment,
    wait_until_site_answers,
)
from bench.upstream import new_event_loop, raise_file_limit
from bench.workloads import (
    CONNECT_CONCURRENCY,
    DIRECT,
    DIRECT_RESPONSES,
    HARNESS_BUSY_LIMIT,
    HARNESS_HEADROOM,
    PROXY,
    PROXY_RESPONSES,
    PROXY_SAVED,
    PROXY_V1,
    AbortMetrics,
    Probes,
    RunMetrics,
    Target,
    client_aborts,
    cpu_bound,
    median_metrics,
    memory_per_stream,
    metrics_dict,
    paced_level,
    sequential,
    soak,
    upstream_records,
)

RESULTS_DIR = BASE_DIR / "bench" / "results"


@dataclass
class BenchSettings:
    """Every knob of a run; `--quick` swaps in a small version of each workload."""

    servers: list[str]
    repeat: int = 1
    users: int = 4
    warmup_streams: int = 20
    latency_requests: int = 50
    latency_chunks: int = 10
    paced_levels: list[int] = field(default_factory=lambda: [10, 25, 50, 100, 200, 300, 400])
    paced_chunks: int = 100
    paced_delay_ms: float = 10
    paced_rounds: int = 2
    cpu_concurrency: int = 10
    cpu_chunks: int = 2000
    cpu_rounds: int = 5
    # Request rate: one-chunk answers, so each request's own cost (authentication, admission, the
    # usage row) is what the server spends its CPU on.
    request_concurrency: int = 10
    request_rounds: int = 30
    # Memory: RSS per open stream with each of these numbers of streams open at once (--memory-levels);
    # the summary table shows the level `memory_summary_streams`. One chunk every `memory_delay_ms`
    # keeps 2,000 streams' chunks a small part of the server's CPU. Each level's streams last as long
    # as starting all of them takes (estimated from the request-rate workload's CPU per request),
    # plus `memory_hold_seconds` all open together, at most `memory_max_seconds`.
    memory_levels: list[int] = field(default_factory=lambda: [100, 500, 2000])
    memory_summary_streams: int = 500
    memory_delay_ms: float = 1000
    memory_hold_seconds: float = 3.0
    memory_max_seconds: float = 90.0
    # How the cost grows (--scaling-levels), against the page's API: (a) one-chunk answers, each of c
    # users sending R requests back to back, R chosen for about `scaling_request_cpu_seconds` of
    # server CPU a level (within `scaling_request_rounds`); (b) paced streams (the paced workload's
    # shape), c open at once, each user running enough answers for about `scaling_paced_chunks`
    # chunks a level (within `scaling_paced_rounds`), so that the CPU figures are readable.
    scaling_levels: list[int] = field(default_factory=lambda: [1, 10, 50, 100, 200, 400])
    scaling_request_cpu_seconds: float = 1.0
    scaling_request_rounds: tuple[int, int] = (2, 400)
    scaling_paced_chunks: int = 20000
    scaling_paced_rounds: tuple[int, int] = (2, 6)
    # Server processes of the same kind for the "one process or two" comparison (--processes 2).
    processes: int = 1
    # The soak (--soak SECONDS): soak_streams users keep a stream open each, reopening it when it ends
    # (answers of soak_chunks chunks, one every soak_delay_ms), soak_abort_share of them hung up on
    # at random; RSS sampled every soak_sample_seconds. `soak_only`: --soak runs nothing else.
    soak_seconds: float = 0.0
    soak_only: bool = False
    soak_streams: int = 200
    soak_chunks: tuple[int, int] = (20, 80)
    soak_delay_ms: float = 100
    soak_abort_share: float = 0.2
    soak_sample_seconds: float = 10.0
    soak_seed: int = 5
    # The slope (second half of the soak) still called flat: see bench/README.md, "Soak".
    soak_flat_kib_per_minute: float = 256.0
    aborts: int = 20
    abort_chunks: int = 100
    abort_delay_ms: float = 10
    abort_after_seconds: float = 0.3
    harness_burst_concurrency: int = 10
    harness_burst_chunks: int = 20000
    harness_paced_levels: list[int] = field(default_factory=lambda: [400, 800, 1600])
    # Extra environment for the site (--site-env), e.g. SESSION_STORE=cache, applied last.
    site_overrides: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, servers: list[str]) -> BenchSettings:
        return cls(
            servers=servers,
            users=1,
            warmup_streams=4,
            latency_requests=10,
            paced_levels=[10],
            paced_chunks=30,
            paced_rounds=1,
            cpu_concurrency=4,
            cpu_chunks=200,
            cpu_rounds=1,
            request_concurrency=4,
            request_rounds=5,
            memory_levels=[10, 20],
            memory_summary_streams=20,
            memory_delay_ms=50,
            memory_hold_seconds=0.5,
            scaling_levels=[1, 4],
            scaling_request_cpu_seconds=0.05,
            scaling_request_rounds=(2, 10),
            scaling_paced_chunks=100,
            scaling_paced_rounds=(2, 2),
            # A tiny soak, so that the smoke test covers it: a few seconds, a few streams.
            soak_seconds=4.0,
            soak_streams=10,
            soak_chunks=(5, 15),
            soak_delay_ms=50,
            soak_sample_seconds=0.5,
            aborts=3,
            abort_chunks=50,
            abort_after_seconds=0.1,
            harness_burst_concurrency=4,
            harness_burst_chunks=1000,
            harness_paced_levels=[],
        )

    @property
    def max_concurrency(self) -> int:
        """The most streams open at once in any workload (the two-process run may try twice the paced levels)."""
        paced = [level * (2 if self.processes > 1 else 1) for level in self.paced_levels]
        soak = [self.soak_streams] if self.soak_seconds else []
        return max([*paced, *self.memory_levels, *self.scaling_levels, *soak, self.cpu_concurrency, 1])

    @property
    def memory_summary_level(self) -> int | None:
        """The memory level the summary shows: `memory_summary_streams` if measured, else the nearest."""
        if not self.memory_levels:
            return None
        return min(self.memory_levels, key=lambda level: abs(level - self.memory_summary_streams))


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a small run (seconds) proving the harness works end to end",
    )
    parser.add_argument(
        "--server",
        choices=["daphne", "uvicorn", "all"],
        default="all",
        help="ASGI server(s) to run the site under (all = every one installed; default)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each workload N times and report medians",
    )
    parser.add_argument(
        "--levels",
        help="paced concurrency levels, comma-separated (default 10,25,50,100,200,300,400)",
    )
    parser.add_argument("--paced", help="paced stream shape CHUNKSxDELAY_MS (default 100x10)")
    parser.add_argument(
        "--scaling-levels",
        help="concurrency levels of 'How the cost grows', comma-separated (default 1,10,50,100,200,400)",
    )
    parser.add_argument(
        "--memory-levels",
        help="numbers of streams open at once for RSS per stream, comma-separated (default 100,500,2000)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        choices=[1, 2],
        default=1,
        help="2: also run the paced levels against two server processes, one per CPU (default 1)",
    )
    parser.add_argument(
        "--soak",
        type=float,
        metavar="SECONDS",
        help="run only the soak, for SECONDS (e.g. 600): streams kept open, some aborted, RSS sampled",
    )
    parser.add_argument("--soak-streams", type=int, help="streams the soak keeps open (default 200)")
    parser.add_argument("--cpu-bound", help="CPU-bound workload CONCURRENCYxCHUNKS (default 10x2000)")
    parser.add_argument(
        "--site-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment variable for the site (repeatable), e.g. SESSION_STORE=cache",
    )
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin processes to CPUs with taskset",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS_DIR,
        help="where to write <timestamp>.md/.json",
    )
    return parser.parse_args(argv)


def build_settings(args: argparse.Namespace) -> BenchSettings:
    if args.server == "all":
        servers = [name for name, kind in SERVERS.items() if kind.installed()]
    else:
        if not SERVERS[args.server].installed():
            raise SystemExit(f"{args.server} is not installed: .venv/bin/pip install -r bench/requirements.txt")
        servers = [args.server]
    settings = BenchSettings.quick(servers) if args.quick else BenchSettings(servers=servers)
    settings.repeat = max(1, args.repeat)
    if args.levels:
        settings.paced_levels = [int(level) for level in args.levels.split(",")]
    if args.paced:
        chunks, delay = args.paced.lower().split("x")
        settings.paced_chunks, settings.paced_delay_ms = int(chunks), float(delay)
    if args.scaling_levels:
        settings.scaling_levels = _levels(args.scaling_levels)
    if args.memory_levels:
        settings.memory_levels = _levels(args.memory_levels)
    settings.processes = args.processes
    if args.soak is not None:
        if args.soak <= 0:
            raise SystemExit("--soak expects a positive number of seconds")
        settings.soak_seconds, settings.soak_only = args.soak, True
        if not args.quick:
            settings.soak_sample_seconds = min(settings.soak_sample_seconds, max(0.5, args.soak / 20))
    if args.soak_streams:
        settings.soak_streams = args.soak_streams
    for assignment in args.site_env:
        name, separator, value = assignment.partition("=")
        if not separator:
            raise SystemExit(f"--site-env expects NAME=VALUE, got {assignment!r}")
        settings.site_overrides[name] = value
    if args.cpu_bound:
        concurrency, chunks = args.cpu_bound.lower().split("x")
        settings.cpu_concurrency, settings.cpu_chunks = int(concurrency), int(chunks)
    return settings


def _levels(text: str) -> list[int]:
    levels = [int(level) for level in text.split(",") if level.strip()]
    if not levels or min(levels) < 1:
        raise SystemExit(f"expected positive comma-separated numbers, got {text!r}")
    return levels


def progress(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class VerificationLedger:
    """Counts every stream whose text was checked, and keeps the first problems found."""

    def __init__(self) -> None:
        self.streams_checked = 0
        self.failed_streams = 0
        self.problems: list[str] = []

    def add(self, label: str, streams: int, failed: int, problems: list[str]) -> None:
        self.streams_checked += streams
        self.failed_streams += failed
        if failed:
            progress(f"TEXT VERIFICATION FAILED in {label}: {failed} stream(s): {problems[:2]}")
            self.problems += [f"{label}: {problem}" for problem in problems][: max(0, 10 - len(self.problems))]

    def add_run(self, label: str, metrics: RunMetrics) -> None:
        self.add(
            f"{label} [{metrics.target}]",
            metrics.streams,
            metrics.failed_streams,
            metrics.problems,
        )

    def as_dict(self) -> dict:
        return {
            "passed": self.failed_streams == 0 and self.streams_checked > 0,
            "streams_checked": self.streams_checked,
            "failed_streams": self.failed_streams,
            "problems": self.problems,
        }


KEEPS_PACE = "keeps pace"
# CPU per request assumed when the request-rate workload could not read it (a run shorter than 0.5 s).
DEFAULT_CPU_MS_PER_REQUEST = 5.0


def pace_verdict(run: RunMetrics) -> str:
    """The verdict of a paced run with no direct run beside it ("How the cost grows", two processes): a
    level kept is kept; one not kept is blamed on the harness only if its CPU was nearly full."""
    if run.keeps_pace:
        return KEEPS_PACE
    if run.harness_cpu_share is not None and run.harness_cpu_share >= HARNESS_BUSY_LIMIT:
        return f"harness saturated (harness CPU {run.harness_cpu_share:.0%}; {run.pace_failure()})"
    return f"falls behind: {run.pace_failure()}"


def kept_up_to(max_kept: int | None, stopped_by: str, highest: int) -> str:
    """The highest paced level kept, as the report says it: "50 (fails at c=100)", "≥ 400 (highest tried)"."""
    if max_kept is None:
        return f"none (fails at {stopped_by})" if stopped_by else "none"
    if max_kept == highest:
        return f"≥ {max_kept} (highest tried)"
    return f"{max_kept} (fails at {stopped_by})" if stopped_by else str(max_kept)


def ttfb_attribution(direct: RunMetrics, proxy: RunMetrics) -> dict[str, float | None]:
    """Where a proxied request's time to first byte went (medians at c=1, seconds).

    The Server-Timing phases start at the view's entry; `proxy` already holds auth and admission (it
    is everything but the upstream until the stream opens). So TTFB − (proxy + upstream) is what
    the header cannot see: the server parsing the request and writing the response head, Django's
    middleware, the loopback. And the upstream phase minus a direct client's TTFB is what the relay's
    own upstream connection (the SDK, its HTTP client and pool) adds over a bare client. Medians of
    parts do not add up exactly to the median of the whole: small negative values are noise.
    """
    phases = proxy.server_timing_p50
    upstream, own = phases.get("upstream"), phases.get("proxy")
    ttfb, direct_ttfb = proxy.ttfb_p50, direct.ttfb_p50
    return {
        "ttfb_p50_direct": direct_ttfb,
        "ttfb_p50": ttfb,
        "ttfb_added": ttfb - direct_ttfb if ttfb is not None and direct_ttfb is not None else None,
        "auth": phases.get("auth"),
        "admission": phases.get("admission"),
        "upstream": upstream,
        "proxy": own,
        "outside_view": ttfb - (own + upstream) if None not in (ttfb, own, upstream) else None,
        "upstream_minus_direct": upstream - direct_ttfb if None not in (upstream, direct_ttfb) else None,
    }


def saturation(direct: RunMetrics, proxy: RunMetrics, paced: bool, cpu_bound: bool) -> str | None:
    """Why the harness, not the proxy, may have been the limit of this comparison (None: it was not)."""
    if paced and not direct.keeps_pace:
        return f"harness saturated (direct: {direct.pace_failure()})"
    if proxy.harness_cpu_share is not None and proxy.harness_cpu_share >= HARNESS_BUSY_LIMIT:
        return f"harness saturated (harness CPU {proxy.harness_cpu_share:.0%} during the proxy run)"
    if cpu_bound and direct.chunks_per_second < HARNESS_HEADROOM * proxy.chunks_per_second:
        return "harness saturated (direct is not clearly faster than the proxy)"
    return None


class Benchmark:
    """One run: the harness's own limits, then every workload under each ASGI server in turn."""

    def __init__(
        self,
        settings: BenchSettings,
        pinning: Pinning,
        processes: ProcessSupervisor,
        work_dir: Path,
    ) -> None:
        self.settings = settings
        self.pinning = pinning
        self.processes = processes
        self.work_dir = work_dir
        self.ledger = VerificationLedger()
        self.api_key = f"sk-bench-{secrets.token_urlsafe(24)}"
        self.sessions: tuple[Session, ...] = ()
        self.api_keys: tuple[str, ...] = ()

    async def repeated(self, make_run: Callable[[], Awaitable[RunMetrics]], label: str) -> RunMetrics:
        runs = []
        for _ in range(self.settings.repeat):
            run = await make_run()
            self.ledger.add_run(label, run)
            runs.append(run)
        return median_metrics(runs)

    async def compare(
        self,
        label: str,
        make_run: Callable[[Target], Awaitable[RunMetrics]],
        *targets: Target,
    ) -> list[RunMetrics]:
        """The same workload against each target in turn (`--repeat` times, interleaved); medians, in order."""
        runs: list[list[RunMetrics]] = [[] for _ in targets]
        for _ in range(self.settings.repeat):
            for target, target_runs in zip(targets, runs, strict=True):
                run = await make_run(target)
                self.ledger.add_run(label, run)
                target_runs.append(run)
        return [median_metrics(target_runs) for target_runs in runs]

    async def run(self) -> dict[str, Any]:
        settings = self.settings
        pin_this_process(self.pinning.harness_cpu)
        upstream_process = self.processes.start(
            "upstream",
            self.pinning.prefix(self.pinning.harness_cpu)
            + python_command("-m", "bench.upstream", "--api-key", self.api_key),
            stdout_pipe=True,
        )
        upstream_port, upstream_loop = read_announced_port(upstream_process)
        progress(f"fake upstream on port {upstream_port} ({upstream_loop}); {self.pinning.describe()}")
        direct = Target(DIRECT, upstream_port, api_key=self.api_key)

        env = site_environment(
            self.work_dir / "bench.sqlite3",
            upstream_port,
            self.api_key,
            2 * settings.max_concurrency + 100,
            settings.site_overrides,
        )
        progress(f"migrating a fresh database and creating {settings.users} user(s), each with an API key")
        accounts = prepare_database(env, settings.users)
        self.api_keys = create_api_keys(env, accounts)

        servers: dict[str, Any] = {}
        if settings.soak_only:
            harness: dict[str, Any] = {"summary": "not measured (--soak runs the soak alone)"}
        else:
            harness_probes = Probes(upstream_process.pid, None, self.pinning.server_cpu, self.pinning.harness_cpu)
            harness = await self.harness_limits(direct, harness_probes)
        for name in settings.servers:
            servers[name] = await self.server_workloads(SERVERS[name], env, accounts, direct, upstream_process.pid)
        return {
            "upstream_loop": upstream_loop,
            "load_generator_loop": _loop_name(),
            "harness": harness,
            "servers": servers,
        }

    async def harness_limits(self, direct: Target, probes: Probes) -> dict[str, Any]:
        """How fast the upstream and load generator go on their own, before any proxy is involved."""
        settings = self.settings
        progress("harness limits: warm-up")
        warmup = await cpu_bound(direct, probes, 4, 1, 50)
        self.ledger.add_run("harness warm-up", warmup)
        burst = await self.repeated(
            lambda: cpu_bound(
                direct,
                probes,
                settings.harness_burst_concurrency,
                1,
                settings.harness_burst_chunks,
            ),
            "harness burst",
        )
        progress(
            f"harness burst: {burst.chunks_per_second:,.0f} chunks/s end to end "
            f"({settings.harness_burst_concurrency} streams × {settings.harness_burst_chunks} chunks, no delay)"
        )
        paced_runs = []
        max_level = None
        for level in settings.harness_paced_levels:
            run = await self.repeated(
                lambda level=level: paced_level(
                    direct, probes, level, settings.paced_rounds, settings.paced_chunks, settings.paced_delay_ms
                ),
                f"harness paced c={level}",
            )
            paced_runs.append({"concurrency": level, **metrics_dict(run)})
            progress(
                f"harness paced c={level}: {'keeps pace' if run.keeps_pace else run.pace_failure()}, "
                f"upstream {run.upstream_cpu_us_per_chunk or 0:.1f} µs/chunk, "
                f"harness CPU {run.harness_cpu_share or 0:.0%}"
            )
            if not run.keeps_pace:
                break
            max_level = level
        burst_upstream_us = burst.upstream_cpu_us_per_chunk or 0.0
        parts = [
            f"burst {burst.chunks_per_second:,.0f} chunks/s end to end "
            f"({settings.harness_burst_concurrency} streams × {settings.harness_burst_chunks:,} chunks, no delay; "
            f"upstream {burst_upstream_us:.2f} µs CPU/chunk"
            + (f" ≈ {1e6 / burst_upstream_us:,.0f} chunks/s on one core)" if burst_upstream_us else ")")
        ]
        kept = next((run for run in reversed(paced_runs) if run["concurrency"] == max_level), None)
        if kept is not None:
            rate = max_level * 1000 / settings.paced_delay_ms if settings.paced_delay_ms else 0
            parts.append(
                f"paced {settings.paced_chunks}×{settings.paced_delay_ms:g} ms streams keep pace up to c={max_level} "
                f"(≈ {rate:,.0f} chunks/s, one write and one read each; "
                f"upstream {kept['upstream_cpu_us_per_chunk'] or 0:.1f} "
                f"µs CPU/chunk, upstream + load generator {kept['harness_cpu_share'] or 0:.0%} of one CPU)"
            )
        if paced_runs and paced_runs[-1]["concurrency"] != max_level:
            parts.append(f"not at c={paced_runs[-1]['concurrency']}")
        elif not paced_runs and settings.harness_paced_levels == []:
            parts.append("paced capacity not measured (--quick)")
        upstream_us = kept["upstream_cpu_us_per_chunk"] if kept else None
        return {
            "burst": metrics_dict(burst),
            "paced": paced_runs,
            "max_paced_concurrency": max_level,
            "upstream_cpu_us_per_paced_chunk": upstream_us,
            "summary": "; ".join(parts),
        }

    async def start_server(
        self, kind: ServerKind, env: dict[str, str], cpu: int | None, log_name: str
    ) -> tuple[int, subprocess.Popen]:
        port = free_port()
        process = self.processes.start(log_name, self.pinning.prefix(cpu) + kind.command(port), env=env)
        wait_until_listening(process, port, self.processes.log_path(log_name))
        await wait_until_site_answers(port)
        return port, process

    async def server_workloads(
        self,
        kind: ServerKind,
        env: dict[str, str],
        accounts: list[Account],
        direct: Target,
        upstream_pid: int,
    ) -> dict[str, Any]:
        progress(f"{kind.name}: starting")
        port, process = await self.start_server(kind, env, self.pinning.server_cpu, kind.name)
        try:
            if self.settings.soak_only:
                results = await self.soak_alone(kind, accounts, direct, port, process.pid, upstream_pid)
            else:
                results = await self._server_workloads(kind, accounts, direct, port, process.pid, upstream_pid)
        except Exception:
            self._show_log(kind.name)
            raise
        finally:
            self.processes.stop(process)
        if self.settings.processes > 1 and not self.settings.soak_only:
            results["two_processes"] = await self.two_processes(kind, env, direct, upstream_pid, results)
        return results

    def _show_log(self, log_name: str) -> None:
        log = self.processes.log_path(log_name)
        progress(f"{log_name} log (last lines):\n{log.read_text()[-3000:] if log.exists() else '(none)'}")

    async def _log_in_once(self, accounts: list[Account], port: int) -> None:
        if not self.sessions:
            progress(f"logging {len(accounts)} user(s) in over HTTP")
            self.sessions = tuple([await log_in(port, account) for account in accounts])

    async def memory_level(
        self,
        kind: ServerKind,
        proxy: Target,
        pid: int,
        streams: int,
        cpu_per_request: float,
        previous: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """RSS per open stream with `streams` open at once.

        The streams must outlast their own start, whose length is estimated twice, the longer
        estimate winning: `streams` × the CPU of a request × 1.25, and, after a smaller level
        (`previous`), `streams` × the time that level took per stream to open × 1.5, since the chunks
        of the streams already open slow the later starts (2,000 streams opened in 12–22 s at
        7–9 ms of CPU a request). Then + 2 s, + `memory_hold_seconds` all open together."""
        settings = self.settings
        ramp = 1.25 * streams * cpu_per_request
        if previous and previous[0]["open_together"]:
            ramp = max(ramp, 1.5 * streams * previous[0]["seconds_to_peak"] / previous[0]["open_together"])
        ramp += 2.0
        seconds = min(settings.memory_max_seconds, ramp + settings.memory_hold_seconds)
        chunks = max(2, math.ceil(seconds * 1000 / settings.memory_delay_ms))
        progress(
            f"{kind.name}: memory with {streams} open streams "
            f"({chunks} chunks × {settings.memory_delay_ms:g} ms, started ≤ {CONNECT_CONCURRENCY} at a time)"
        )
        memory = await memory_per_stream(proxy, pid, streams, chunks, settings.memory_delay_ms)
        self.ledger.add(f"{kind.name} memory {streams} [proxy]", memory.streams, memory.failed_streams, memory.problems)
        per_stream = memory.bytes_per_stream
        progress(
            f"{kind.name}: memory: {memory.open_together} of {streams} open together "
            f"{memory.seconds_to_peak:.1f} s after the first request, {(per_stream or 0) / 1024:.1f} KiB per stream"
        )
        return {
            **asdict(memory),
            "chunks": chunks,
            "delay_ms": settings.memory_delay_ms,
            "kib_per_stream": per_stream / 1024 if per_stream is not None else None,
        }

    async def scaling(self, kind: ServerKind, proxy: Target, probes: Probes, cpu_per_request: float) -> dict[str, Any]:
        """How the cost grows with concurrency, on the page's API: at each level, the server CPU a
        one-chunk request costs, then a paced chunk's, as measured and net of that per-request cost."""
        settings = self.settings
        paced_name = f"paced {settings.paced_chunks}×{settings.paced_delay_ms:g} ms"
        rows = []
        for level in settings.scaling_levels:
            low, high = settings.scaling_request_rounds
            rounds = min(high, max(low, math.ceil(settings.scaling_request_cpu_seconds / (cpu_per_request * level))))
            progress(f"{kind.name}: how the cost grows, c={level}: {level} × {rounds} one-chunk requests")
            requests = await self.repeated(
                lambda level=level, rounds=rounds: cpu_bound(proxy, probes, level, rounds, 1),
                f"{kind.name} scaling 1-chunk c={level}",
            )
            low, high = settings.scaling_paced_rounds
            paced_rounds = min(
                high, max(low, math.ceil(settings.scaling_paced_chunks / (level * settings.paced_chunks)))
            )
            progress(f"{kind.name}: how the cost grows, c={level}: {paced_name}, {paced_rounds} answers per user")
            paced = await self.repeated(
                lambda level=level, paced_rounds=paced_rounds: paced_level(
                    proxy, probes, level, paced_rounds, settings.paced_chunks, settings.paced_delay_ms
                ),
                f"{kind.name} scaling {paced_name} c={level}",
            )
            net = None
            if requests.server_cpu_ms_per_request is not None and paced.server_cpu_us_per_chunk is not None:
                own = paced.server_cpu_seconds - paced.streams * requests.server_cpu_ms_per_request / 1000
                net = own * 1e6 / paced.content_chunks
            verdict = pace_verdict(paced)
            progress(
                f"{kind.name}: c={level}: {requests.requests_per_second:,.0f} requests/s, "
                f"{_number(requests.server_cpu_ms_per_request, 2)} ms CPU/request; paced "
                f"{_number(paced.server_cpu_us_per_chunk, 1)} µs CPU/chunk ({_number(net, 1)} net), {verdict}"
            )
            rows.append(
                {
                    "concurrency": level,
                    "request_rounds": rounds,
                    "requests": metrics_dict(requests),
                    "paced_rounds": paced_rounds,
                    "paced": metrics_dict(paced),
                    "paced_net_cpu_us_per_chunk": net,
                    "paced_verdict": verdict,
                }
            )
        return {"request_workload": "1-chunk answers", "paced_workload": paced_name, "levels": rows}

    async def soak(self, kind: ServerKind, proxy: Target, pid: int) -> dict[str, Any]:
        settings = self.settings
        low, high = settings.soak_chunks
        progress(
            f"{kind.name}: soak for {settings.soak_seconds:g} s: {settings.soak_streams} streams kept open "
            f"({low}–{high} chunks × {settings.soak_delay_ms:g} ms), {settings.soak_abort_share:.0%} aborted, "
            f"RSS every {settings.soak_sample_seconds:g} s"
        )
        result = await soak(
            proxy,
            pid,
            settings.soak_seconds,
            settings.soak_streams,
            settings.soak_chunks,
            settings.soak_delay_ms,
            settings.soak_abort_share,
            settings.soak_sample_seconds,
            settings.soak_seed,
            settings.soak_flat_kib_per_minute,
        )
        self.ledger.add(f"{kind.name} soak [proxy]", result.started, result.failed_streams, result.problems)
        summary = result.as_dict()
        progress(
            f"{kind.name}: soak: {result.completed} completed, {result.aborted} aborted, {result.failed_streams} "
            f"failed; RSS {_mib(summary['start_rss_bytes'])} → {_mib(summary['end_rss_bytes'])} MiB "
            f"(max {_mib(summary['max_rss_bytes'])}), second half {_number(result.slope_kib_per_minute, 0)} "
            f"KiB/min: {result.verdict}"
        )
        return summary

    async def soak_alone(
        self, kind: ServerKind, accounts: list[Account], direct: Target, port: int, pid: int, upstream_pid: int
    ) -> dict[str, Any]:
        """`--soak`: log in, warm the server up, soak; no other workload."""
        await self._log_in_once(accounts, port)
        proxy = Target(PROXY, port, sessions=self.sessions)
        probes = Probes(upstream_pid, pid, self.pinning.server_cpu, self.pinning.harness_cpu)
        progress(f"{kind.name}: warm-up")
        warmup = await cpu_bound(proxy, probes, 4, max(1, self.settings.warmup_streams // 4), 20)
        self.ledger.add_run(f"{kind.name} warm-up", warmup)
        results = {"description": _description(kind), "soak": await self.soak(kind, proxy, pid)}
        await upstream_records(direct.port)  # let the upstream forget this server's streams
        return results

    async def two_processes(
        self, kind: ServerKind, env: dict[str, str], direct: Target, upstream_pid: int, one: dict[str, Any]
    ) -> dict[str, Any]:
        """The paced levels against two server processes, each pinned to its own CPU, the upstream and
        the load generator free to run on either (the machine may have no third CPU to give them).
        Users alternate between the processes. The levels are the paced ones, plus twice the highest
        level one process kept pace at: the level two processes must keep if capacity doubles."""
        settings = self.settings
        cpus = [self.pinning.server_cpu, self.pinning.harness_cpu]
        one_max: int | None = one["paced_max_kept"]
        levels = sorted({*settings.paced_levels, *([2 * one_max] if one_max else [])})
        paced_name = f"paced {settings.paced_chunks}×{settings.paced_delay_ms:g} ms"
        where = f"on CPUs {cpus[0]} and {cpus[1]}" if self.pinning.active else "unpinned"
        progress(f"{kind.name}: two processes {where}, the upstream and load generator on any CPU")
        started: list[tuple[int, subprocess.Popen]] = []
        rows = []
        max_kept: int | None = None
        stopped_by = ""
        try:
            for index, cpu in enumerate(cpus):
                started.append(await self.start_server(kind, env, cpu, f"{kind.name}-{index + 1}-of-2"))
            if self.pinning.active:
                for process_id in (os.getpid(), upstream_pid):
                    set_process_cpus(process_id, set(self.pinning.all_cpus))
            (port, first), (second_port, second) = started
            target = Target(PROXY, port, sessions=self.sessions, more_ports=(second_port,))
            probes = Probes(upstream_pid, first.pid, more_server_pids=(second.pid,))
            warmup = await cpu_bound(target, probes, 4, max(1, settings.warmup_streams // 4), 20)
            self.ledger.add_run(f"{kind.name} two processes warm-up", warmup)
            for level in levels:
                run = await self.repeated(
                    lambda level=level: paced_level(
                        target, probes, level, settings.paced_rounds, settings.paced_chunks, settings.paced_delay_ms
                    ),
                    f"{kind.name} two processes {paced_name} c={level}",
                )
                verdict = pace_verdict(run)
                progress(
                    f"{kind.name}: two processes, c={level}: {verdict} (server CPU "
                    f"{' + '.join(_percent(share) for share in run.server_cpu_shares) or '-'}, harness "
                    f"{_percent(run.harness_cpu_total_share)} of one CPU)"
                )
                rows.append({"concurrency": level, "proxy": metrics_dict(run), "verdict": verdict})
                if verdict != KEEPS_PACE:
                    stopped_by = f"c={level}"
                    break
                max_kept = level
        except Exception:
            for index in range(len(started)):
                self._show_log(f"{kind.name}-{index + 1}-of-2")
            raise
        finally:
            if self.pinning.active:
                for process_id in (os.getpid(), upstream_pid):
                    set_process_cpus(process_id, {self.pinning.harness_cpu})
            for _, process in started:
                self.processes.stop(process)
        await upstream_records(direct.port)
        one_row = next((row for row in one["paced"] if row["concurrency"] == one_max), None)
        return {
            "workload": paced_name,
            "pinning": (
                f"server processes on CPUs {cpus[0]} and {cpus[1]}; upstream and load generator on any CPU"
                if self.pinning.active
                else "no pinning"
            ),
            "levels": rows,
            "max_kept": max_kept,
            "max_concurrency": kept_up_to(max_kept, stopped_by, levels[-1]),
            "one_process_max_kept": one_max,
            "one_process_at_max": one_row["proxy"] if one_row else None,
            "one_process_max_concurrency": one["paced_max_concurrency"],
        }

    async def _server_workloads(
        self,
        kind: ServerKind,
        accounts: list[Account],
        direct: Target,
        port: int,
        pid: int,
        upstream_pid: int,
    ) -> dict[str, Any]:
        settings = self.settings
        await self._log_in_once(accounts, port)
        proxy = Target(PROXY, port, sessions=self.sessions)
        proxy_v1 = Target(PROXY_V1, port, api_keys=self.api_keys)
        proxy_saved = Target(PROXY_SAVED, port, sessions=self.sessions)
        direct_responses = Target(DIRECT_RESPONSES, direct.port, api_key=direct.api_key)
        proxy_responses = Target(PROXY_RESPONSES, port, sessions=self.sessions)
        # The server's CPU time is read in direct runs too (it should stay idle there).
        probes = Probes(upstream_pid, pid, self.pinning.server_cpu, self.pinning.harness_cpu)

        progress(f"{kind.name}: warm-up")
        for target in (direct, proxy, proxy_v1, proxy_saved, direct_responses, proxy_responses):
            warmup = await cpu_bound(target, probes, 4, max(1, settings.warmup_streams // 4), 20)
            self.ledger.add_run(f"{kind.name} warm-up", warmup)

        progress(f"{kind.name}: latency, {settings.latency_requests} sequential requests")
        direct_latency, proxy_latency, v1_latency, saved_latency = await self.compare(
            f"{kind.name} latency",
            lambda target: sequential(target, probes, settings.latency_requests, settings.latency_chunks),
            direct,
            proxy,
            proxy_v1,
            proxy_saved,
        )
        progress(
            f"{kind.name}: latency: TTFB p50 direct {_ms(direct_latency.ttfb_p50)}, "
            f"page API {_ms(proxy_latency.ttfb_p50)}, /v1 {_ms(v1_latency.ttfb_p50)} ms"
        )
        attribution = {
            PROXY: ttfb_attribution(direct_latency, proxy_latency),
            PROXY_V1: ttfb_attribution(direct_latency, v1_latency),
        }
        page = attribution[PROXY]
        progress(
            f"{kind.name}: page API TTFB p50 {_ms(page['ttfb_p50'])} ms = proxy {_ms(page['proxy'])} + "
            f"upstream {_ms(page['upstream'])} + outside the view {_ms(page['outside_view'])} ms"
        )

        requests = settings.request_concurrency * settings.request_rounds
        rate_name = "request rate, 1-chunk answers"
        progress(f"{kind.name}: {rate_name}, {requests} requests at c={settings.request_concurrency}")
        direct_rate, proxy_rate, v1_rate, saved_rate = await self.compare(
            f"{kind.name} {rate_name}",
            lambda target: cpu_bound(target, probes, settings.request_concurrency, settings.request_rounds, 1),
            direct,
            proxy,
            proxy_v1,
            proxy_saved,
        )
        progress(
            f"{kind.name}: {rate_name}: page API {proxy_rate.requests_per_second:,.0f}/s, "
            f"/v1 {v1_rate.requests_per_second:,.0f}/s; direct {direct_rate.requests_per_second:,.0f}/s"
        )
        # Later workloads size themselves from this: the server CPU one request costs (seconds).
        cpu_per_request = (proxy_rate.server_cpu_ms_per_request or DEFAULT_CPU_MS_PER_REQUEST) / 1000

        memory: list[dict[str, Any]] = []
        for streams in sorted(settings.memory_levels):
            memory.append(await self.memory_level(kind, proxy, pid, streams, cpu_per_request, memory[-1:]))

        paced_rows = []
        max_kept: int | None = None
        stopped_by = ""
        paced_name = f"paced {settings.paced_chunks}×{settings.paced_delay_ms:g} ms"
        for level in settings.paced_levels:
            direct_run, proxy_run = await self.compare(
                f"{kind.name} {paced_name} c={level}",
                lambda target, level=level: paced_level(
                    target,
                    probes,
                    level,
                    settings.paced_rounds,
                    settings.paced_chunks,
                    settings.paced_delay_ms,
                ),
                direct,
                proxy,
            )
            saturated = saturation(direct_run, proxy_run, paced=True, cpu_bound=False)
            if saturated:
                verdict = saturated
            elif proxy_run.keeps_pace:
                verdict = "keeps pace"
                max_kept = level
            else:
                verdict = f"falls behind: {proxy_run.pace_failure()}"
            progress(
                f"{kind.name}: {paced_name} c={level}: {verdict} "
                f"(proxy TTFB p99 {(proxy_run.ttfb_p99 or 0) * 1000:.0f} ms, "
                f"stream p99 {proxy_run.duration_p99 or 0:.2f} s, server CPU {proxy_run.server_cpu_share or 0:.0%})"
            )
            paced_rows.append(
                {
                    "workload": paced_name,
                    "concurrency": level,
                    "direct": metrics_dict(direct_run),
                    "proxy": metrics_dict(proxy_run),
                    "verdict": verdict,
                    "saturated": bool(saturated),
                }
            )
            if saturated or not proxy_run.keeps_pace:
                stopped_by = f"c={level}" + (", harness saturated" if saturated else "")
                break
        paced_max = kept_up_to(max_kept, stopped_by, settings.paced_levels[-1])
        best_paced = next(
            (row["proxy"] for row in reversed(paced_rows) if row["verdict"] == "keeps pace"),
            None,
        )

        # The Responses API at the highest level the chat proxy kept pace at (the first level tried
        # if it kept pace at none): the same streams, as Responses events.
        responses_level = max_kept if max_kept is not None else settings.paced_levels[0]
        level_choice = (
            "the highest level the chat proxy kept pace at"
            if max_kept is not None
            else "the first level tried (the chat proxy kept pace at none)"
        )
        chat_at_level = next(row for row in paced_rows if row["concurrency"] == responses_level)
        direct_responses_paced, proxy_responses_paced = await self.compare(
            f"{kind.name} {paced_name} c={responses_level} (Responses)",
            lambda target: paced_level(
                target,
                probes,
                responses_level,
                settings.paced_rounds,
                settings.paced_chunks,
                settings.paced_delay_ms,
            ),
            direct_responses,
            proxy_responses,
        )
        responses_paced_saturated = saturation(
            direct_responses_paced, proxy_responses_paced, paced=True, cpu_bound=False
        )
        if responses_paced_saturated:
            responses_paced_verdict = responses_paced_saturated
        elif proxy_responses_paced.keeps_pace:
            responses_paced_verdict = "keeps pace"
        else:
            responses_paced_verdict = f"falls behind: {proxy_responses_paced.pace_failure()}"
        progress(
            f"{kind.name}: {paced_name} c={responses_level} (Responses): {responses_paced_verdict} "
            f"(proxy TTFB p99 {(proxy_responses_paced.ttfb_p99 or 0) * 1000:.0f} ms, "
            f"{proxy_responses_paced.server_cpu_us_per_chunk or 0:.1f} µs CPU/event; chat "
            f"{chat_at_level['proxy']['server_cpu_us_per_chunk'] or 0:.1f} µs CPU/chunk)"
        )

        cpu_name = f"CPU-bound {settings.cpu_chunks}×0 ms"
        progress(f"{kind.name}: {cpu_name}, c={settings.cpu_concurrency} (chat and Responses)")
        direct_cpu, proxy_cpu, v1_cpu, direct_responses_cpu, proxy_responses_cpu = await self.compare(
            f"{kind.name} {cpu_name}",
            lambda target: cpu_bound(
                target,
                probes,
                settings.cpu_concurrency,
                settings.cpu_rounds,
                settings.cpu_chunks,
            ),
            direct,
            proxy,
            proxy_v1,
            direct_responses,
            proxy_responses,
        )
        cpu_saturated = saturation(direct_cpu, proxy_cpu, paced=False, cpu_bound=True)
        v1_cpu_saturated = saturation(direct_cpu, v1_cpu, paced=False, cpu_bound=True)
        responses_cpu_saturated = saturation(direct_responses_cpu, proxy_responses_cpu, paced=False, cpu_bound=True)
        progress(
            f"{kind.name}: {cpu_name}: page API {proxy_cpu.chunks_per_second:,.0f} chunks/s, "
            f"{proxy_cpu.server_cpu_us_per_chunk or 0:.1f} µs CPU/chunk; "
            f"/v1 {v1_cpu.chunks_per_second:,.0f} chunks/s, {v1_cpu.server_cpu_us_per_chunk or 0:.1f} µs CPU/chunk; "
            f"Responses {proxy_responses_cpu.chunks_per_second:,.0f} events/s, "
            f"{proxy_responses_cpu.server_cpu_us_per_chunk or 0:.1f} µs CPU/event; "
            f"direct {direct_cpu.chunks_per_second:,.0f} chunks/s"
        )

        progress(f"{kind.name}: {settings.aborts} client aborts")
        aborts = {}
        for target in (direct, proxy):
            result: AbortMetrics = await client_aborts(
                target,
                direct.port,
                settings.aborts,
                settings.abort_chunks,
                settings.abort_delay_ms,
                settings.abort_after_seconds,
            )
            self.ledger.add(
                f"{kind.name} aborts [{target.name}]",
                result.aborts,
                result.failed_streams,
                result.problems,
            )
            aborts[target.name] = result.as_dict()
        await upstream_records(direct.port)  # let the upstream forget this server's streams

        scaling = await self.scaling(kind, proxy, probes, cpu_per_request)
        soak_results = None
        if settings.soak_seconds:
            soak_results = await self.soak(kind, proxy, pid)

        latency_saturated = saturation(direct_latency, proxy_latency, paced=False, cpu_bound=False)
        v1_latency_saturated = saturation(direct_latency, v1_latency, paced=False, cpu_bound=False)
        return {
            "description": _description(kind),
            "memory": {"levels": memory, "summary_streams": settings.memory_summary_level},
            "ttfb_attribution": attribution,
            "scaling": scaling,
            **({"soak": soak_results} if soak_results is not None else {}),
            "latency": {
                "requests": settings.latency_requests,
                "chunks": settings.latency_chunks,
                "direct": metrics_dict(direct_latency),
                "proxy": metrics_dict(proxy_latency),
                "proxy_v1": metrics_dict(v1_latency),
                "proxy_saved": metrics_dict(saved_latency),
                "verdict": latency_saturated or "ok",
                "proxy_v1_verdict": v1_latency_saturated or "ok",
            },
            "request_rate": {
                "workload": rate_name,
                "concurrency": settings.request_concurrency,
                "direct": metrics_dict(direct_rate),
                "proxy": metrics_dict(proxy_rate),
                "proxy_v1": metrics_dict(v1_rate),
                "proxy_saved": metrics_dict(saved_rate),
                "verdict": saturation(direct_rate, proxy_rate, paced=False, cpu_bound=True) or "ok",
                "proxy_v1_verdict": saturation(direct_rate, v1_rate, paced=False, cpu_bound=True) or "ok",
            },
            "paced": paced_rows,
            "paced_max_concurrency": paced_max,
            "paced_max_kept": max_kept,
            "paced_best": best_paced,
            "cpu_bound": {
                "workload": cpu_name,
                "concurrency": settings.cpu_concurrency,
                "direct": metrics_dict(direct_cpu),
                "proxy": metrics_dict(proxy_cpu),
                "proxy_v1": metrics_dict(v1_cpu),
                "verdict": cpu_saturated or "ok",
                "saturated": bool(cpu_saturated),
                "proxy_v1_verdict": v1_cpu_saturated or "ok",
            },
            "aborts": aborts,
            "responses": {
                "paced": {
                    "workload": paced_name,
                    "concurrency": responses_level,
                    "level_choice": level_choice,
                    DIRECT_RESPONSES: metrics_dict(direct_responses_paced),
                    PROXY_RESPONSES: metrics_dict(proxy_responses_paced),
                    "verdict": responses_paced_verdict,
                    "saturated": bool(responses_paced_saturated),
                },
                "cpu_bound": {
                    "workload": cpu_name,
                    "concurrency": settings.cpu_concurrency,
                    DIRECT_RESPONSES: metrics_dict(direct_responses_cpu),
                    PROXY_RESPONSES: metrics_dict(proxy_responses_cpu),
                    "verdict": responses_cpu_saturated or "ok",
                    "saturated": bool(responses_cpu_saturated),
                },
            },
        }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _number(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share:.0%}"


def _mib(size: int | None) -> str:
    return "-" if size is None else f"{size / 1024 / 1024:.1f}"


def _description(kind: ServerKind) -> str:
    return f"{kind.name} {version(kind.module)}: {kind.description}"


def _loop_name() -> str:
    loop = asyncio.get_running_loop()
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def main(argv: list[str] | None = None) -> int:
    args = parse_arguments(argv)
    settings = build_settings(args)
    if not settings.servers:
        print("no ASGI server installed (daphne is in requirements.txt)", file=sys.stderr)
        return 2
    machine = machine_description()  # before pinning narrows this process to one CPU
    pinning = plan_pinning(enabled=not args.no_pin)
    raise_file_limit()  # the children (server, upstream) inherit it
    # The server holds two sockets per stream (client and upstream), plus its database and files.
    needed = 2 * settings.max_concurrency + 256
    soft_limit, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft_limit < needed:
        print(
            f"{settings.max_concurrency} streams at once need {needed} file descriptors, the limit is {soft_limit}: "
            "raise `ulimit -Hn`, or lower --memory-levels / --levels / --scaling-levels",
            file=sys.stderr,
        )
        return 2
    started_at = datetime.now(UTC)
    started = time.monotonic()
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")
    command = shlex.join(["python", "-m", "bench", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory(prefix="chatproxy-bench-") as work_dir:
        try:
            with (
                ProcessSupervisor(Path(work_dir)) as processes,
                asyncio.Runner(loop_factory=new_event_loop) as runner,
            ):
                benchmark = Benchmark(settings, pinning, processes, Path(work_dir))
                measured = runner.run(benchmark.run())
        except KeyboardInterrupt:
            print("\ninterrupted; every child process was stopped", file=sys.stderr)
            return 130
    results = {
        "started_at": started_at.strftime("%Y-%m-%d %H:%M UTC"),
        "command": command,
        "duration_seconds": time.monotonic() - started,
        "machine": machine,
        "load_average_at_end": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "pinning": pinning.describe(),
        "settings": asdict(settings),
        "verification": benchmark.ledger.as_dict(),
        **measured,
    }
    markdown_path, json_path = write_results(results, args.results_dir, stamp)
    print(render_markdown(results))
    print(f"Written: {markdown_path} and {json_path}")
    return 0 if results["verification"]["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())

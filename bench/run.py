"""Benchmark of the relay against the same workload sent straight to the upstream (issue 5).

    .venv/bin/python -m bench [--quick] [--server daphne|uvicorn|all] [--repeat N]

Starts the fake upstream (bench/upstream.py), migrates a throwaway SQLite database, then for each
ASGI server: starts the site, logs users in over HTTP, and runs every workload twice, through the
proxy and straight at the upstream. Prints a markdown report and writes it, with the JSON, to
bench/results/. Exit status 0 means every stream's text arrived intact; timings never fail a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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
    memory_streams: int = 200
    memory_chunks: int = 40
    memory_delay_ms: float = 100
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
            memory_streams=10,
            memory_chunks=20,
            memory_delay_ms=50,
            aborts=3,
            abort_chunks=50,
            abort_after_seconds=0.1,
            harness_burst_concurrency=4,
            harness_burst_chunks=1000,
            harness_paced_levels=[],
        )

    @property
    def max_concurrency(self) -> int:
        return max([*self.paced_levels, self.memory_streams, self.cpu_concurrency, 1])


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
    for assignment in args.site_env:
        name, separator, value = assignment.partition("=")
        if not separator:
            raise SystemExit(f"--site-env expects NAME=VALUE, got {assignment!r}")
        settings.site_overrides[name] = value
    if args.cpu_bound:
        concurrency, chunks = args.cpu_bound.lower().split("x")
        settings.cpu_concurrency, settings.cpu_chunks = int(concurrency), int(chunks)
    return settings


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

        harness_probes = Probes(upstream_process.pid, None, self.pinning.server_cpu, self.pinning.harness_cpu)
        harness = await self.harness_limits(direct, harness_probes)
        servers: dict[str, Any] = {}
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

    async def start_server(self, kind: ServerKind, env: dict[str, str]) -> tuple[int, subprocess.Popen]:
        port = free_port()
        process = self.processes.start(
            kind.name,
            self.pinning.prefix(self.pinning.server_cpu) + kind.command(port),
            env=env,
        )
        wait_until_listening(process, port, self.processes.log_path(kind.name))
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
        port, process = await self.start_server(kind, env)
        try:
            return await self._server_workloads(kind, accounts, direct, port, process.pid, upstream_pid)
        except Exception:
            log = self.processes.log_path(kind.name)
            progress(f"{kind.name} log (last lines):\n{log.read_text()[-3000:] if log.exists() else '(none)'}")
            raise
        finally:
            self.processes.stop(process)

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
        if not self.sessions:
            progress(f"logging {len(accounts)} user(s) in over HTTP")
            self.sessions = tuple([await log_in(port, account) for account in accounts])
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

        progress(f"{kind.name}: memory with {settings.memory_streams} open streams")
        memory = await memory_per_stream(
            proxy,
            pid,
            settings.memory_streams,
            settings.memory_chunks,
            settings.memory_delay_ms,
        )
        self.ledger.add(
            f"{kind.name} memory [proxy]",
            memory.streams,
            memory.failed_streams,
            memory.problems,
        )
        per_stream = memory.bytes_per_stream

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
        if max_kept is None:
            paced_max = f"none (fails at {stopped_by})" if stopped_by else "none"
        elif max_kept == settings.paced_levels[-1]:
            paced_max = f"≥ {max_kept} (highest tried)"
        else:
            paced_max = f"{max_kept} (fails at {stopped_by})" if stopped_by else str(max_kept)
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

        latency_saturated = saturation(direct_latency, proxy_latency, paced=False, cpu_bound=False)
        v1_latency_saturated = saturation(direct_latency, v1_latency, paced=False, cpu_bound=False)
        return {
            "description": f"{kind.name} {version(kind.module)}: {kind.description}",
            "memory": {
                **asdict(memory),
                "kib_per_stream": per_stream / 1024 if per_stream is not None else None,
            },
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
    raise_file_limit()
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

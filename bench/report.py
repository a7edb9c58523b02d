"""The benchmark's results: a markdown report (printed and saved) and the same data as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    value = seconds * 1000
    return f"{value:.1f}" if abs(round(value, 1)) < 10 else f"{value:.0f}"


def _pair(first: float | None, second: float | None) -> str:
    return f"{_ms(first)} / {_ms(second)}"


def _added(proxy: float | None, direct: float | None) -> str:
    if proxy is None or direct is None:
        return "-"
    return f"{'+' if proxy >= direct else ''}{_ms(proxy - direct)}"


def _number(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _run_row(server: str, workload: str, concurrency: str, run: dict, verdict: str) -> list[str]:
    return [
        server,
        workload,
        concurrency,
        run["target"],
        str(run["streams"]),
        _pair(run["ttfb_p50"], run["ttfb_p99"]),
        _pair(run["ttft_p50"], run["ttft_p99"]),
        "-" if run["duration_p99"] is None else f"{run['duration_p99']:.2f}",
        _number(run["chunks_per_second"]),
        _number(run["server_cpu_us_per_chunk"], 1) if run["target"] == "proxy" else "-",
        _percent(run["server_cpu_share"]) if run["target"] == "proxy" else "-",
        _percent(run["harness_cpu_share"]),
        f"{_percent(run['other_load_server_cpu'])} / {_percent(run['other_load_harness_cpu'])}",
        verdict if run["target"] == "proxy" else _direct_verdict(run),
    ]


def _direct_verdict(run: dict) -> str:
    """A direct run is the baseline; in a paced workload it must itself keep pace."""
    if run["paced_seconds"] is None:
        return "baseline"
    return "baseline, keeps pace" if run["keeps_pace"] else "baseline FALLS BEHIND (harness saturated)"


def render_markdown(results: dict[str, Any]) -> str:
    machine = results["machine"]
    harness = results["harness"]
    verification = results["verification"]
    lines = [
        f"# chatproxy relay benchmark, {results['started_at']}",
        "",
        f"- Command: `{results['command']}`",
        (
            f"- Machine: {machine['cpu_model']}, {machine['cpus_online']} CPUs online "
            f"({machine['cpus_available']} usable), Linux {machine['kernel']}, Python {machine['python']}; "
            f"load average at start {machine['load_average_at_start']}, at end {results['load_average_at_end']}"
        ),
        f"- Pinning: {results['pinning']}",
        "- Site environment overrides (--site-env): "
        + (", ".join(f"{k}={v}" for k, v in results["settings"]["site_overrides"].items()) or "none"),
        f"- Event loops: fake upstream {results['upstream_loop']}, load generator {results['load_generator_loop']}",
        "- Servers: " + "; ".join(f"{name}: {server['description']}" for name, server in results["servers"].items()),
        (
            f"- Text verification: **{'passed' if verification['passed'] else 'FAILED'}** "
            f"({verification['streams_checked']:,} streams checked, direct and proxied; "
            f"{verification['failed_streams']} failed)"
        ),
        f"- Harness limits (straight to the upstream, no proxy): {harness['summary']}",
        f"- Run time: {results['duration_seconds']:.0f} s",
        "",
    ]
    if verification["problems"]:
        lines += ["**Verification problems:**", ""] + [f"- {p}" for p in verification["problems"]] + [""]
    lines += ["## Summary", ""]
    summary_rows = []
    for name, server in results["servers"].items():
        latency = server["latency"]
        direct, proxy = latency["direct"], latency["proxy"]
        cpu = server["cpu_bound"]["proxy"]
        memory = server["memory"]
        aborts = server["aborts"]["proxy"]
        best_paced = server["paced_best"]
        summary_rows.append(
            [
                name,
                _pair(proxy["ttfb_p50"], proxy["ttfb_p99"]),
                f"{_added(proxy['ttfb_p50'], direct['ttfb_p50'])} / {_added(proxy['ttfb_p99'], direct['ttfb_p99'])}",
                _pair(proxy["ttft_p50"], proxy["ttft_p99"]),
                f"{_added(proxy['ttft_p50'], direct['ttft_p50'])} / {_added(proxy['ttft_p99'], direct['ttft_p99'])}",
                _number(cpu["chunks_per_second"])
                + (" (harness saturated)" if server["cpu_bound"]["saturated"] else ""),
                (
                    f"{_number(cpu['server_cpu_us_per_chunk'], 1)} / "
                    f"{_number(best_paced['server_cpu_us_per_chunk'], 1) if best_paced else '-'}"
                ),
                _number(memory["kib_per_stream"], 1) + f" (N={memory['open_together']})",
                server["paced_max_concurrency"],
                _pair(aborts["close_delay_p50"], aborts["close_delay_p99"])
                + (f" ({aborts['never_closed']} never)" if aborts["never_closed"] else ""),
                f"{_number(aborts['chunks_after_close_p50'])} / {_number(aborts['chunks_after_close_max'])}",
            ]
        )
    lines += _table(
        [
            "server",
            "TTFB p50 / p99 ms",
            "TTFB added",
            "TTFT p50 / p99 ms",
            "TTFT added",
            "relayed chunks/s (CPU-bound)",
            "CPU µs/chunk (CPU-bound / paced)",
            "RSS KiB per open stream",
            "keeps pace up to c",
            "abort: upstream closed after p50 / p99 ms",
            "chunks sent after abort p50 / max",
        ],
        summary_rows,
    )
    lines += ["", "## All runs", ""]
    rows = []
    for name, server in results["servers"].items():
        latency = server["latency"]
        for run in (latency["direct"], latency["proxy"]):
            rows.append(
                _run_row(
                    name,
                    f"latency ({latency['requests']} sequential)",
                    "1",
                    run,
                    latency["verdict"],
                )
            )
        for level in server["paced"]:
            for run in (level["direct"], level["proxy"]):
                rows.append(
                    _run_row(
                        name,
                        level["workload"],
                        str(level["concurrency"]),
                        run,
                        level["verdict"],
                    )
                )
        cpu = server["cpu_bound"]
        for run in (cpu["direct"], cpu["proxy"]):
            rows.append(_run_row(name, cpu["workload"], str(cpu["concurrency"]), run, cpu["verdict"]))
    lines += _table(
        [
            "server",
            "workload",
            "c",
            "target",
            "streams",
            "TTFB p50 / p99 ms",
            "TTFT p50 / p99 ms",
            "stream p99 s",
            "content chunks/s",
            "server CPU µs/chunk",
            "server CPU",
            "harness CPU",
            "other load (server / harness CPU)",
            "verdict",
        ],
        rows,
    )
    lines += ["", "## Client aborts and memory", ""]
    abort_rows = []
    for name, server in results["servers"].items():
        for run in (server["aborts"]["direct"], server["aborts"]["proxy"]):
            abort_rows.append(
                [
                    name,
                    run["target"],
                    str(run["aborts"]),
                    _pair(run["close_delay_p50"], run["close_delay_p99"]),
                    str(run["never_closed"]),
                    f"{_number(run['chunks_after_close_p50'])} / {_number(run['chunks_after_close_max'])}",
                ]
            )
    lines += _table(
        [
            "server",
            "target",
            "aborts",
            "upstream saw close after p50 / p99 ms",
            "never closed",
            "chunks after abort p50 / max",
        ],
        abort_rows,
    )
    lines += [""]
    memory_rows = []
    for name, server in results["servers"].items():
        memory = server["memory"]
        memory_rows.append(
            [
                name,
                f"{memory['open_together']} of {memory['streams']}",
                _number(memory["idle_rss_bytes"] / 1024 / 1024, 1),
                _number(memory["loaded_rss_bytes"] / 1024 / 1024, 1),
                _number(memory["kib_per_stream"], 1),
            ]
        )
    lines += _table(
        [
            "server",
            "streams open together",
            "idle RSS MiB",
            "RSS MiB with them open",
            "KiB per stream",
        ],
        memory_rows,
    )
    lines += [""]
    return "\n".join(lines)


def write_results(results: dict[str, Any], directory: Path, stamp: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    markdown_path = directory / f"{stamp}.md"
    json_path = directory / f"{stamp}.json"
    markdown_path.write_text(render_markdown(results))
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return markdown_path, json_path

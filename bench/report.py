"""The benchmark's results: a markdown report (printed and saved) and the same data as JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

TARGET_LABELS = {
    "direct": "direct",
    "proxy": "proxy (session)",
    "proxy_v1": "proxy /v1 (bearer key)",
    "direct_responses": "direct Responses",
    "proxy_responses": "proxy Responses (session)",
}
# The chat completions proxies (the page's API and /v1), and every proxy target.
CHAT_PROXY_TARGETS = ("proxy", "proxy_v1")
PROXY_TARGETS = (*CHAT_PROXY_TARGETS, "proxy_responses")


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


def _difference(value: float | None, baseline: float | None, digits: int = 0) -> str:
    if value is None or baseline is None:
        return "-"
    return f"{value - baseline:+,.{digits}f}"


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
    proxied = run["target"] in PROXY_TARGETS
    return [
        server,
        workload,
        concurrency,
        TARGET_LABELS[run["target"]],
        str(run["streams"]),
        _pair(run["ttfb_p50"], run["ttfb_p99"]),
        _pair(run["ttft_p50"], run["ttft_p99"]),
        "-" if run["duration_p99"] is None else f"{run['duration_p99']:.2f}",
        _number(run["chunks_per_second"]),
        _number(run["server_cpu_us_per_chunk"], 1) if proxied else "-",
        _percent(run["server_cpu_share"]) if proxied else "-",
        _percent(run["harness_cpu_share"]),
        f"{_percent(run['other_load_server_cpu'])} / {_percent(run['other_load_harness_cpu'])}",
        verdict if proxied else _direct_verdict(run),
    ]


def _workload_rows(server: str, workload: str, concurrency: str, entry: dict) -> list[list[str]]:
    """One row per target the workload ran against: direct, the page's API, and /v1 where measured;
    or direct and the page's API for the Responses API. `verdict` is the page API's, `<target>_verdict` another's."""
    return [
        _run_row(server, workload, concurrency, entry[target], entry.get(f"{target}_verdict", entry["verdict"]))
        for target in TARGET_LABELS
        if target in entry
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
    lines += ["## Summary (the page's API: session cookie and CSRF header, NDJSON)", ""]
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
    lines += ["", *_api_comparison(results), "", *_responses_comparison(results), "", "## All runs", ""]
    rows = []
    for name, server in results["servers"].items():
        latency = server["latency"]
        rows += _workload_rows(name, f"latency ({latency['requests']} sequential)", "1", latency)
        rate = server["request_rate"]
        rows += _workload_rows(name, rate["workload"], str(rate["concurrency"]), rate)
        for level in server["paced"]:
            rows += _workload_rows(name, level["workload"], str(level["concurrency"]), level)
        cpu = server["cpu_bound"]
        rows += _workload_rows(name, cpu["workload"], str(cpu["concurrency"]), cpu)
        for entry in server["responses"].values():
            rows += _workload_rows(name, f"{entry['workload']} (Responses)", str(entry["concurrency"]), entry)
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
                    TARGET_LABELS[run["target"]],
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


def _api_comparison(results: dict[str, Any]) -> list[str]:
    """The page's API against `/v1`: the same relay behind two fronts, so the last row is what a
    bearer key costs a request compared with a session cookie and CSRF header."""
    lines = ["## The page's API (session) against /v1 (bearer key)", ""]
    rows = []
    request_concurrency = "-"
    for name, server in results["servers"].items():
        latency, rate, cpu = server["latency"], server["request_rate"], server["cpu_bound"]
        request_concurrency = str(rate["concurrency"])
        direct = latency["direct"]
        for target in CHAT_PROXY_TARGETS:
            run = latency[target]
            rows.append(
                [
                    name,
                    TARGET_LABELS[target],
                    _pair(run["ttfb_p50"], run["ttfb_p99"]),
                    f"{_added(run['ttfb_p50'], direct['ttfb_p50'])} / {_added(run['ttfb_p99'], direct['ttfb_p99'])}",
                    f"{_added(run['ttft_p50'], direct['ttft_p50'])} / {_added(run['ttft_p99'], direct['ttft_p99'])}",
                    _number(rate[target]["requests_per_second"]),
                    _number(rate[target]["server_cpu_ms_per_request"], 2),
                    _number(cpu[target]["chunks_per_second"]),
                    _number(cpu[target]["server_cpu_us_per_chunk"], 1),
                ]
            )
        page, v1 = latency["proxy"], latency["proxy_v1"]
        rows.append(
            [
                name,
                "**/v1 minus page API**",
                f"{_added(v1['ttfb_p50'], page['ttfb_p50'])} / {_added(v1['ttfb_p99'], page['ttfb_p99'])}",
                "",
                f"{_added(v1['ttft_p50'], page['ttft_p50'])} / {_added(v1['ttft_p99'], page['ttft_p99'])}",
                _difference(rate["proxy_v1"]["requests_per_second"], rate["proxy"]["requests_per_second"]),
                _difference(
                    rate["proxy_v1"]["server_cpu_ms_per_request"], rate["proxy"]["server_cpu_ms_per_request"], 2
                ),
                _difference(cpu["proxy_v1"]["chunks_per_second"], cpu["proxy"]["chunks_per_second"]),
                _difference(cpu["proxy_v1"]["server_cpu_us_per_chunk"], cpu["proxy"]["server_cpu_us_per_chunk"], 1),
            ]
        )
        saved = latency.get("proxy_saved")
        if saved is not None:  # results from before conversations were saved have none
            rows.append(
                [
                    name,
                    "**page API saving conversations, minus page API**",
                    f"{_added(saved['ttfb_p50'], page['ttfb_p50'])} / {_added(saved['ttfb_p99'], page['ttfb_p99'])}",
                    "",
                    f"{_added(saved['ttft_p50'], page['ttft_p50'])} / {_added(saved['ttft_p99'], page['ttft_p99'])}",
                    _difference(rate["proxy_saved"]["requests_per_second"], rate["proxy"]["requests_per_second"]),
                    _difference(
                        rate["proxy_saved"]["server_cpu_ms_per_request"],
                        rate["proxy"]["server_cpu_ms_per_request"],
                        2,
                    ),
                    "",
                    "",
                ]
            )
    lines += _table(
        [
            "server",
            "API",
            "TTFB p50 / p99 ms (c=1)",
            "TTFB added over direct",
            "TTFT added over direct",
            f"requests/s (1-chunk answers, c={request_concurrency})",
            "server CPU ms/request",
            "relayed chunks/s (CPU-bound)",
            "CPU µs/chunk (CPU-bound)",
        ],
        rows,
    )
    return lines


def _responses_comparison(results: dict[str, Any]) -> list[str]:
    """The Responses API against chat completions on the page's API: the same streams, the same
    relay, as Responses events; "per chunk" is per content event (`response.output_text.delta`)."""
    lines = [
        "## Responses API (the page's `/api/responses/stream`) against chat completions (`/api/chat/stream`)",
        "",
        "Same paced and CPU-bound workloads; a content chunk is a chat chunk with `delta.content` or a "
        "`response.output_text.delta` event (a Responses answer also has 8 lifecycle/item events around its deltas, "
        "chat 3 chunks). TTFB added is over the same API straight at the upstream.",
        "",
    ]
    rows = []
    for name, server in results["servers"].items():
        responses = server["responses"]
        paced = responses["paced"]
        chat_paced = next((row for row in server["paced"] if row["concurrency"] == paced["concurrency"]), None)
        pairs = [
            (
                f"{paced['workload']} ({paced['level_choice']})",
                str(paced["concurrency"]),
                chat_paced,
                paced,
            ),
            (
                responses["cpu_bound"]["workload"],
                str(responses["cpu_bound"]["concurrency"]),
                server["cpu_bound"],
                responses["cpu_bound"],
            ),
        ]
        for workload, concurrency, chat, entry in pairs:
            chat_run = chat["proxy"] if chat else None
            run = entry["proxy_responses"]
            if chat and chat_run:
                rows.append(
                    _api_row(name, workload, concurrency, "chat completions", chat_run, chat["direct"], chat["verdict"])
                )
            rows.append(
                _api_row(name, workload, concurrency, "Responses", run, entry["direct_responses"], entry["verdict"])
            )
            if chat_run:
                chat_us, responses_us = chat_run["server_cpu_us_per_chunk"], run["server_cpu_us_per_chunk"]
                ratio = f"{responses_us / chat_us:.2f}× chat per event" if chat_us and responses_us else ""
                rows.append(
                    [
                        name,
                        workload,
                        concurrency,
                        "**Responses minus chat**",
                        _added_pair(run, chat_run, "ttfb"),
                        "",
                        _difference(run["chunks_per_second"], chat_run["chunks_per_second"]),
                        _difference(responses_us, chat_us, 1),
                        ratio,
                    ]
                )
    lines += _table(
        [
            "server",
            "workload",
            "c",
            "API",
            "TTFB p50 / p99 ms",
            "TTFB added p50 / p99",
            "content chunks (events)/s",
            "server CPU µs/content event",
            "verdict",
        ],
        rows,
    )
    return lines


def _api_row(
    server: str, workload: str, concurrency: str, api: str, run: dict, direct: dict, verdict: str
) -> list[str]:
    return [
        server,
        workload,
        concurrency,
        api,
        _pair(run["ttfb_p50"], run["ttfb_p99"]),
        _added_pair(run, direct, "ttfb"),
        _number(run["chunks_per_second"]),
        _number(run["server_cpu_us_per_chunk"], 1),
        verdict,
    ]


def _added_pair(run: dict, baseline: dict, measure: str) -> str:
    """`run` minus `baseline` at p50 and p99 of `measure` ("ttfb", "ttft")."""
    return " / ".join(_added(run[f"{measure}_{p}"], baseline[f"{measure}_{p}"]) for p in ("p50", "p99"))


def write_results(results: dict[str, Any], directory: Path, stamp: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    markdown_path = directory / f"{stamp}.md"
    json_path = directory / f"{stamp}.json"
    markdown_path.write_text(render_markdown(results))
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    return markdown_path, json_path

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
    measured = {name: server for name, server in results["servers"].items() if "latency" in server}
    if measured:
        lines += _summary(measured)
        lines += ["", *_api_comparison(measured), "", *_ttfb_attribution(measured), ""]
        lines += [*_responses_comparison(measured), "", *_scaling(measured), ""]
        lines += _two_processes(measured)
        lines += ["## All runs", "", *_all_runs(measured), "", "## Client aborts and memory", ""]
        lines += [*_aborts(measured), "", *_memory(measured), ""]
    soaked = {name: server["soak"] for name, server in results["servers"].items() if "soak" in server}
    if soaked:
        lines += [*_soak(soaked), ""]
    return "\n".join(lines)


def _memory_at_summary(server: dict[str, Any]) -> dict[str, Any] | None:
    """The memory level the summary shows (`summary_streams`, 500 by default)."""
    memory = server["memory"]
    levels = memory["levels"]
    return next((level for level in levels if level["streams"] == memory["summary_streams"]), None)


def _summary(servers: dict[str, Any]) -> list[str]:
    lines = ["## Summary (the page's API: session cookie and CSRF header, NDJSON)", ""]
    summary_rows = []
    memory_streams = "-"
    for name, server in servers.items():
        latency = server["latency"]
        direct, proxy = latency["direct"], latency["proxy"]
        cpu = server["cpu_bound"]["proxy"]
        memory = _memory_at_summary(server)
        memory_streams = str(server["memory"]["summary_streams"])
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
                (_number(memory["kib_per_stream"], 1) + f" ({memory['open_together']} open)") if memory else "-",
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
            f"RSS KiB per open stream, {memory_streams} streams",
            "keeps pace up to c",
            "abort: upstream closed after p50 / p99 ms",
            "chunks sent after abort p50 / max",
        ],
        summary_rows,
    )
    return lines


def _all_runs(servers: dict[str, Any]) -> list[str]:
    rows = []
    for name, server in servers.items():
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
        scaling = server.get("scaling")
        for level in scaling["levels"] if scaling else ():
            concurrency = str(level["concurrency"])
            workload = f"{scaling['request_workload']}, {level['request_rounds']} each (cost growth)"
            rows.append(_run_row(name, workload, concurrency, level["requests"], "-"))
            workload = f"{scaling['paced_workload']}, {level['paced_rounds']} each (cost growth)"
            rows.append(_run_row(name, workload, concurrency, level["paced"], level["paced_verdict"]))
        two = server.get("two_processes")
        for level in two["levels"] if two else ():
            workload = f"{two['workload']} (two processes)"
            rows.append(_run_row(name, workload, str(level["concurrency"]), level["proxy"], level["verdict"]))
    return _table(
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


def _aborts(servers: dict[str, Any]) -> list[str]:
    abort_rows = []
    for name, server in servers.items():
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
    return _table(
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


def _memory(servers: dict[str, Any]) -> list[str]:
    """RSS per open stream at each level; the one the summary shows is in bold."""
    memory_rows = []
    for name, server in servers.items():
        summary_streams = server["memory"]["summary_streams"]
        for level in server["memory"]["levels"]:
            per_stream = _number(level["kib_per_stream"], 1)
            memory_rows.append(
                [
                    name,
                    f"{level['open_together']} of {level['streams']}",
                    f"{level['chunks']} × {level['delay_ms']:g} ms",
                    _number(level["idle_rss_bytes"] / 1024 / 1024, 1),
                    _number(level["loaded_rss_bytes"] / 1024 / 1024, 1),
                    f"**{per_stream}**" if level["streams"] == summary_streams else per_stream,
                    str(level["failed_streams"]),
                ]
            )
    return _table(
        [
            "server",
            "streams open together",
            "stream shape",
            "idle RSS MiB",
            "RSS MiB with them open",
            "KiB per stream",
            "failed",
        ],
        memory_rows,
    )


def _ttfb_attribution(servers: dict[str, Any]) -> list[str]:
    """Where the time to first byte goes, from the site's own Server-Timing header (c=1 medians)."""
    lines = [
        "## Where the time to first byte goes (latency workload, c=1, p50 ms)",
        "",
        "From each response's `Server-Timing` header (medians): auth and admission are inside the proxy's own "
        "part; outside the view = proxied TTFB − (proxy + upstream): the server's parsing and writing, Django's "
        "middleware and the loopback, which the header cannot see; upstream − direct TTFB = what the relay's "
        "upstream connection adds over a direct client.",
        "",
    ]
    rows = []
    for name, server in servers.items():
        for target, entry in server.get("ttfb_attribution", {}).items():
            rows.append(
                [
                    name,
                    TARGET_LABELS[target],
                    _ms(entry["ttfb_p50_direct"]),
                    _ms(entry["ttfb_p50"]),
                    _added(entry["ttfb_p50"], entry["ttfb_p50_direct"]),
                    _ms(entry["auth"]),
                    _ms(entry["admission"]),
                    _ms(entry["upstream"]),
                    _ms(entry["proxy"]),
                    _ms(entry["outside_view"]),
                    _ms(entry["upstream_minus_direct"]),
                ]
            )
    lines += _table(
        [
            "server",
            "API",
            "TTFB direct",
            "TTFB through the proxy",
            "TTFB added",
            "auth",
            "admission",
            "upstream",
            "proxy (own part)",
            "outside the view",
            "upstream − direct TTFB",
        ],
        rows,
    )
    return lines


def _scaling(servers: dict[str, Any]) -> list[str]:
    """How the cost grows with concurrency: per request (one-chunk answers) and per paced chunk."""
    lines = ["## How the cost grows (the page's API)", ""]
    rows = []
    paced_workload = "paced"
    for name, server in servers.items():
        scaling = server.get("scaling")
        if not scaling:
            continue
        paced_workload = scaling["paced_workload"]
        for level in scaling["levels"]:
            requests, paced = level["requests"], level["paced"]
            rows.append(
                [
                    name,
                    str(level["concurrency"]),
                    f"{requests['streams']} ({level['concurrency']} × {level['request_rounds']})",
                    _number(requests["requests_per_second"]),
                    _pair(requests["ttfb_p50"], requests["ttfb_p99"]),
                    _number(requests["server_cpu_ms_per_request"], 2),
                    _percent(requests["server_cpu_share"]),
                    f"{paced['streams']} ({level['concurrency']} × {level['paced_rounds']})",
                    _number(paced["server_cpu_us_per_chunk"], 1),
                    _number(level["paced_net_cpu_us_per_chunk"], 1),
                    _percent(paced["server_cpu_share"]),
                    _percent(paced["harness_cpu_share"]),
                    level["paced_verdict"],
                ]
            )
    lines += [
        f"One-chunk answers: c users, each sending R requests back to back. Paced: {paced_workload}, c streams open "
        "at once; net = (server CPU − streams × CPU per one-chunk request at the same c) / chunks, what a chunk "
        'costs once its request is paid for. CPU figures are clock ticks (10 ms) over the run: "-" under 0.5 s.',
        "",
    ]
    lines += _table(
        [
            "server",
            "c",
            "1-chunk requests",
            "requests/s",
            "TTFB p50 / p99 ms",
            "server CPU ms/request",
            "server CPU",
            "paced streams",
            "server CPU µs/chunk",
            "net of per-request µs/chunk",
            "server CPU (paced)",
            "harness CPU (paced)",
            "paced verdict",
        ],
        rows,
    )
    return lines


def _two_processes(servers: dict[str, Any]) -> list[str]:
    """One server process against two (--processes 2): the highest paced level each keeps pace at."""
    entries = {name: server["two_processes"] for name, server in servers.items() if "two_processes" in server}
    if not entries:
        return []
    lines = ["## One process or two (the page's API, paced)", ""]
    rows = []
    for name, two in entries.items():
        one = two["one_process_at_max"]
        lines.append(
            f"- {name}: one process keeps pace up to c = {two['one_process_max_concurrency']}; two processes up to "
            f"c = {two['max_concurrency']}. Two processes: {two['pinning']}."
        )
        if one:
            processes = "1 (its CPU; the harness on the other)"
            rows.append(_process_row(name, processes, two["one_process_max_kept"], one, "keeps pace"))
        for level in two["levels"]:
            rows.append(_process_row(name, "2", level["concurrency"], level["proxy"], level["verdict"]))
    lines += [
        "",
        "Server CPU is each process's CPU / wall time (100% = one core). Harness CPU is the upstream and load "
        "generator together, as a share of one CPU: with two processes it runs on the same two CPUs as the servers.",
        "",
    ]
    lines += _table(
        [
            "server",
            "processes",
            "c",
            "TTFB p50 / p99 ms",
            "stream p99 s",
            "content chunks/s",
            "server CPU (each process)",
            "harness CPU (one CPU = 100%)",
            "verdict",
        ],
        rows,
    )
    return [*lines, ""]


def _process_row(server: str, processes: str, concurrency: int, run: dict, verdict: str) -> list[str]:
    shares = run.get("server_cpu_shares") or [run["server_cpu_share"]]
    return [
        server,
        processes,
        str(concurrency),
        _pair(run["ttfb_p50"], run["ttfb_p99"]),
        "-" if run["duration_p99"] is None else f"{run['duration_p99']:.2f}",
        _number(run["chunks_per_second"]),
        " + ".join(_percent(share) for share in shares),
        _percent(run.get("harness_cpu_total_share")),
        verdict,
    ]


def _soak(soaks: dict[str, Any]) -> list[str]:
    lines = [
        "## Soak (the page's API)",
        "",
        "Streams kept open for the whole run, each reopened when it ends, a share of them hung up on by the client at "
        "a random point; RSS sampled through the run. Slope: least squares over the second half; "
        f'"flat" within ± {next(iter(soaks.values()))["flat_limit_kib_per_minute"]:g} KiB/min (bench/README.md, '
        '"Soak"); no verdict under 60 s.',
        "",
    ]
    rows = []
    for name, soak in soaks.items():
        slope = soak["slope_kib_per_minute"]
        per_minute = soak["started"] / (soak["seconds"] / 60) if soak["seconds"] else 0
        per_stream = f"≈ {slope * 1024 / per_minute:,.0f} B" if slope is not None and per_minute else "-"
        rows.append(
            [
                name,
                f"{soak['seconds']:g}",
                f"{soak['streams']} ({soak['abort_share']:.0%} aborted)",
                f"{soak['completed']:,} / {soak['aborted']:,} / {soak['failed_streams']:,}",
                " / ".join(
                    _number(value / 1024 / 1024 if value is not None else None, 1)
                    for value in (
                        soak["idle_rss_bytes"],
                        soak["start_rss_bytes"],
                        soak["end_rss_bytes"],
                        soak["max_rss_bytes"],
                    )
                ),
                _difference(slope, 0.0, 0),
                per_stream,
                soak["verdict"],
            ]
        )
    lines += _table(
        [
            "server",
            "seconds",
            "streams open",
            "completed / aborted / failed",
            "RSS MiB idle / start / end / max",
            "slope KiB/min (2nd half)",
            "slope per stream started",
            "verdict",
        ],
        rows,
    )
    return lines


def _api_comparison(servers: dict[str, Any]) -> list[str]:
    """The page's API against `/v1`: the same relay behind two fronts, so the last row is what a
    bearer key costs a request compared with a session cookie and CSRF header."""
    lines = ["## The page's API (session) against /v1 (bearer key)", ""]
    rows = []
    request_concurrency = "-"
    for name, server in servers.items():
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


def _responses_comparison(servers: dict[str, Any]) -> list[str]:
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
    for name, server in servers.items():
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

"""Prometheus metrics: what the relay did, for a scraper of `/metrics` (see `streaming.metrics_views`).

Every request that reached for the upstream is counted once, from its usage row (`count_usage`);
a request refused before it (authentication, validation, a limit) is counted where it is refused.
The hot path pays a few `time.monotonic()` calls and one observation per histogram per request;
nothing per chunk.

With several server processes, set `PROMETHEUS_MULTIPROC_DIR` (before the processes start) to a
directory they all share, emptied at deploy start: prometheus-client then keeps every value in a
file there, and a scrape of any process adds up all of them. Without it the values live in this
process only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import time
from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

from .conf import app_settings

if TYPE_CHECKING:
    from .errors import ApiError
    from .models import UsageLog
    from .timings import RequestTimings
    from .usage import StreamAccount

MULTIPROCESS_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

# Seconds; the relay's own overhead is milliseconds, an answer's first token up to minutes.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# The upstream's phase (its time to its headers) may take seconds.
PHASE_BUCKETS = (*OVERHEAD_BUCKETS, 5.0, 10.0, 30.0)
FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)

REQUESTS = Counter(
    "chatproxy_requests_total",
    "Chat API requests by endpoint, model and outcome: completed, error, cancelled (from their usage"
    " rows), or refused before they reached the upstream (model empty).",
    ["endpoint", "model", "outcome"],
)
REFUSALS = Counter(
    "chatproxy_refused_requests_total",
    "Requests refused before they reached the upstream, by endpoint and error code.",
    ["endpoint", "code"],
)
LIMIT_REFUSALS = Counter("chatproxy_limit_refusals_total", "Requests refused by a per-user limit, by limit.", ["limit"])
TOKENS = Counter(
    "chatproxy_tokens_total",
    "Tokens by model and kind (prompt, completion), as the usage rows count them.",
    ["model", "kind"],
)
COST = Counter("chatproxy_cost_total", "Cost of the usage rows by model, in the currency named.", ["model", "currency"])
UNPRICED = Counter(
    "chatproxy_unpriced_requests_total", "Usage rows with no price for their model (no cost).", ["model"]
)
UPSTREAM_ERRORS = Counter("chatproxy_upstream_errors_total", "Requests that ended in an error, by its code.", ["code"])
OPEN_STREAMS = Gauge(
    "chatproxy_open_streams", "Relay streams open now (summed over live processes).", multiprocess_mode="livesum"
)
FIRST_TOKEN = Histogram(
    "chatproxy_time_to_first_token_seconds",
    "From the request's admission to the answer's first token, by model.",
    ["model"],
    buckets=FIRST_TOKEN_BUCKETS,
)
REQUEST_OVERHEAD = Histogram(
    "chatproxy_relay_request_overhead_seconds",
    "From the view's entry (authentication, validation, limits, an upstream connection) to the upstream call.",
    buckets=OVERHEAD_BUCKETS,
)
PHASES = Histogram(
    "chatproxy_request_phase_seconds",
    "Where a relayed request's time went before its stream began, by phase: auth, admission, upstream"
    " (the upstream until its headers) and proxy (the proxy's own part: all but the upstream), as its"
    " Server-Timing header says.",
    ["phase"],
    buckets=PHASE_BUCKETS,
)
FIRST_BYTE_OVERHEAD = Histogram(
    "chatproxy_relay_first_byte_overhead_seconds",
    "From the upstream's first bytes of the answer to the relay's first output of them to the client.",
    buckets=OVERHEAD_BUCKETS,
)


def request_timed(timings: RequestTimings) -> None:
    """A request reached for the upstream: where its time went before its stream began."""
    if timings.upstream_called:
        REQUEST_OVERHEAD.observe(timings.upstream_called - timings.entered)
    for phase, seconds in timings.phases().items():
        PHASES.labels(phase).observe(seconds)


def first_byte_relayed(received_at: float) -> None:
    """The first answer bytes, received upstream at `received_at`, go to the client."""
    FIRST_BYTE_OVERHEAD.observe(time.monotonic() - received_at)


def request_refused(endpoint: str, error: ApiError) -> None:
    REQUESTS.labels(endpoint, "", "refused").inc()
    REFUSALS.labels(endpoint, error.code or "").inc()


def limit_refused(limit: str) -> None:
    LIMIT_REFUSALS.labels(limit).inc()


def upstream_error(code: str | None) -> None:
    UPSTREAM_ERRORS.labels(code or "").inc()


def stream_ended(status: str) -> None:
    """The stream ran to its end; in error when the upstream's last event said it failed (a
    Responses `response.failed`), which `/v1/responses` answers with `upstream_stream_error`."""
    if status == "error":
        UPSTREAM_ERRORS.labels("upstream_stream_error").inc()


def count_usage(row: UsageLog, account: StreamAccount | None = None) -> None:
    """One finished request, from its usage row (and its account's precise first-token time; none
    for a request its process died relaying, settled by a sweep)."""
    model = row.model
    REQUESTS.labels(row.endpoint, model, row.status).inc()
    if row.prompt_tokens:
        TOKENS.labels(model, "prompt").inc(row.prompt_tokens)
    if row.completion_tokens:
        TOKENS.labels(model, "completion").inc(row.completion_tokens)
    if row.cost:
        COST.labels(model, app_settings.CHAT_CURRENCY).inc(float(row.cost))
    elif row.price_missing:
        UNPRICED.labels(model).inc()
    if account is not None and account.first_output_at is not None:
        FIRST_TOKEN.labels(model).observe(account.first_output_at - account.started)


def _forget_dead_processes(path: str) -> None:
    """Drop the open-stream counts of processes that are gone (a crash, a restart of one process):
    their counters and histograms stay, as they should, but their open streams are closed."""
    from prometheus_client import multiprocess

    for name in glob.glob(os.path.join(path, "gauge_live*_*.db")):
        match = re.search(r"_(\d+)\.db$", name)
        if match is None or int(match[1]) == os.getpid():
            continue
        try:
            os.kill(int(match[1]), 0)
        except ProcessLookupError:
            with contextlib.suppress(FileNotFoundError):
                multiprocess.mark_process_dead(int(match[1]), path)
        except PermissionError:  # alive, another user's
            pass


if MULTIPROCESS_DIR:
    _forget_dead_processes(MULTIPROCESS_DIR)

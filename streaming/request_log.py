"""One structured log line per chat request, for log pipelines: no prompt text, no key."""

from __future__ import annotations

import logging

import orjson

logger = logging.getLogger("streaming.requests")


def log_request(**fields: object) -> None:
    """Log `fields` as one JSON object; callers pass ids, model, status, tokens and timings only."""
    if logger.isEnabledFor(logging.INFO):
        logger.info(orjson.dumps({"event": "chat_request", **fields}).decode())

"""Where a relayed request's time went before its stream began, so that each response can say what
the proxy added: its `Server-Timing` header, its request log line and the phase histogram.

Times are marks on the monotonic clock, from the view's entry (the server's own parsing and
Django's middleware before the view are not in them):

- `auth`: the front (session and CSRF, or the API key), from the view's entry, which includes the
  hop to a database thread;
- `admission`: the body's validation, the saved conversation, the limits and the usage row;
- `upstream`: the upstream's call until its status and headers (its time to first byte);
- `proxy`: the proxy's own part, everything else until the stream opens: the three above but the
  upstream, the way back from the database thread and waiting for an upstream connection.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# The phases, in the order they happen.
AUTH, ADMISSION, UPSTREAM, PROXY = "auth", "admission", "upstream", "proxy"
PHASE_DESCRIPTIONS = {
    AUTH: "authentication",
    ADMISSION: "validation, limits and the usage row",
    UPSTREAM: "the upstream until its headers",
    PROXY: "the proxy's own part",
}


@dataclass
class RequestTimings:
    entered: float = field(default_factory=time.monotonic)
    authenticated: float = 0.0
    admitted: float = 0.0
    upstream_called: float = 0.0
    upstream_answered: float = 0.0
    opened: float = 0.0

    def phases(self) -> dict[str, float]:
        """The phases known so far, in seconds."""
        phases = {}
        if self.authenticated:
            phases[AUTH] = self.authenticated - self.entered
            if self.admitted:
                phases[ADMISSION] = self.admitted - self.authenticated
        upstream = 0.0
        if self.upstream_called and self.upstream_answered:
            upstream = phases[UPSTREAM] = self.upstream_answered - self.upstream_called
        if self.opened:
            phases[PROXY] = self.opened - self.entered - upstream
        return phases

    def milliseconds(self) -> dict[str, float | None]:
        """Every phase in milliseconds (rounded to µs), None where it is not known: the log line's fields."""
        phases = self.phases()
        return {f"{name}_ms": _ms(phases[name]) if name in phases else None for name in PHASE_DESCRIPTIONS}

    def server_timing(self) -> str:
        """The `Server-Timing` header: each known phase's duration in milliseconds, with its description."""
        return ", ".join(
            f'{name};dur={_ms(seconds)};desc="{PHASE_DESCRIPTIONS[name]}"' for name, seconds in self.phases().items()
        )


def _ms(seconds: float) -> float:
    return round(max(0.0, seconds) * 1000, 3)

"""The project's Redis cache backend: one connection pool per server process, not one per request.

Runs against the Redis of CACHE_URL (CI's second run); skipped on the embedded defaults, and failed
instead under CHATPROXY_REQUIRE_SERVICES=1.
"""

from __future__ import annotations

import redis
from django.conf import settings

from tests.fake_upstream import Reply
from tests.live_site import STREAM_URL, skip_or_fail, wait_for_rows

# Within the live site's rate limit (30 a minute), with the warm-up.
REQUESTS = 20


def redis_url() -> str:
    location = settings.CACHES["default"].get("LOCATION", "")
    if "Redis" not in settings.CACHES["default"]["BACKEND"]:
        skip_or_fail("needs CACHE_URL=redis://...", required_by="CHATPROXY_REQUIRE_SERVICES")
    return location if isinstance(location, str) else location[0]


def connections_received(client: redis.Redis) -> int:
    return int(client.info("stats")["total_connections_received"])


def test_requests_share_the_server_processes_connections_to_redis(site_client, fake_upstream, user):
    client = redis.Redis.from_url(redis_url())
    site_client.post(STREAM_URL, json={"messages": [{"role": "user", "content": "warm up"}]}).read()
    before = connections_received(client)
    fake_upstream.will_reply(*[Reply(pieces=["Hi"]) for _ in range(REQUESTS)])
    for _ in range(REQUESTS):
        with site_client.stream("POST", STREAM_URL, json={"messages": [{"role": "user", "content": "Hi"}]}) as r:
            assert r.status_code == 200
            r.read()
    wait_for_rows(user, count=REQUESTS + 1)
    # Each request used the cache (its session, its limits, its counters) in the server process.
    assert connections_received(client) - before < 10, "new connections to Redis for each request"

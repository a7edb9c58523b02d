"""The relay's database work, on a few long-lived threads of its own.

Under ASGI, Django runs a request's synchronous code (`sync_to_async`) on a thread made for that
request, so every connection opened there is a new one, closed when the request ends. The relay's
database work (admission, the usage row's refreshes and its settling) runs instead on a small pool
of threads that outlive requests: a connection kept by `CONN_MAX_AGE` (this project does so on
SQLite) is reused by the next request, and one from Django's PostgreSQL pool goes back to the pool
after each call. The pool also bounds how many connections the relay holds, however many requests
arrive at once (`CHAT_DATABASE_THREADS`).
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from django.db import close_old_connections

from .conf import app_settings

P = ParamSpec("P")
R = TypeVar("R")

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def database_executor() -> ThreadPoolExecutor:
    """The process's pool of database threads, made on first use."""
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = ThreadPoolExecutor(
                    max_workers=app_settings.CHAT_DATABASE_THREADS, thread_name_prefix="chatproxy-db"
                )
    return _executor


async def in_database_thread(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """`func(*args, **kwargs)` on a database thread; its connection is then kept or handed back as
    the site's settings say (`close_old_connections`).

    One thread hop, cheaper than `sync_to_async`'s. The function runs in the thread's own context,
    not a copy of the caller's: Django keeps a cache client per context (`caches`), so in a copy
    each request would open new connections to Redis (redis-py also reads its package metadata
    from disk for each), where each database thread keeps one. The functions run here touch the
    database and the cache, never the request's context-bound state (its language, its URL prefix).
    """
    call = functools.partial(_then_release_connections, func, *args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(database_executor(), call)


def _then_release_connections(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return func(*args, **kwargs)
    finally:
        close_old_connections()

"""Browsers may call /v1 only from the origins CHAT_API_CORS_ORIGINS lists (django-cors-headers).

A page on a listed origin (a port on localhost) streams an answer with fetch and a bearer key; a
page on any other origin is stopped by the browser, since the site sends it no CORS headers.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.fake_upstream import FakeUpstream, Reply
from tests.live_site import MODEL, LiveSite, free_port

PAGE = b"<!doctype html><title>notebook</title><p>A page on another origin."
# What the browser runs: a streamed chat completion with the headers the openai SDK sends.
FETCH_ANSWER = """async ([url, key, model]) => {
  try {
    const response = await fetch(url + "/v1/chat/completions", {
      method: "POST",
      headers: {
        "Authorization": "Bearer " + key,
        "Content-Type": "application/json",
        "X-Stainless-Lang": "js",
        "X-Stainless-Retry-Count": "0",
      },
      body: JSON.stringify({ model, stream: true, messages: [{ role: "user", content: "Hi" }] }),
    });
    return { status: response.status, body: await response.text() };
  } catch (error) {
    return { error: String(error) };
  }
}"""


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(PAGE)))
        self.end_headers()
        self.wfile.write(PAGE)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve_page(port: int) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def listed_page(cors_origin: str) -> Iterator[str]:
    yield from serve_page(int(cors_origin.rsplit(":", 1)[1]))


@pytest.fixture
def unlisted_page() -> Iterator[str]:
    yield from serve_page(free_port())


def test_a_listed_origin_streams_from_v1_with_a_key(
    cors_site: LiveSite, fake_upstream: FakeUpstream, api_key, listed_page, unlisted_page, browser
):
    fake_upstream.will_reply(Reply(pieces=["Hello", " from", " afar"]), Reply())
    page = browser.new_page()
    page.goto(listed_page)
    answer = page.evaluate(FETCH_ANSWER, [cors_site.url, api_key, MODEL])
    assert answer.get("status") == 200, answer
    assert '"content":" afar"' in answer["body"] and answer["body"].endswith("data: [DONE]\n\n")

    page.goto(unlisted_page)
    refused = page.evaluate(FETCH_ANSWER, [cors_site.url, api_key, MODEL])
    assert "Failed to fetch" in refused.get("error", ""), refused
    page.close()


def test_no_cors_headers_unless_the_site_lists_the_origin(live_site: LiveSite, cors_site: LiveSite, cors_origin):
    preflight = {
        "Origin": cors_origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,x-stainless-os",
    }
    unlisted = httpx.options(f"{live_site.url}/v1/chat/completions", headers=preflight)
    assert "access-control-allow-origin" not in unlisted.headers
    listed = httpx.options(f"{cors_site.url}/v1/chat/completions", headers=preflight)
    assert listed.headers["access-control-allow-origin"] == cors_origin
    assert "x-stainless-os" in listed.headers["access-control-allow-headers"]
    assert "authorization" in listed.headers["access-control-allow-headers"]
    # The page's own API is same-origin only, whatever the list says.
    page_api = httpx.options(f"{cors_site.url}/api/chat/stream", headers=preflight)
    assert "access-control-allow-origin" not in page_api.headers

"""The chat page people keep using, in a real browser: Chromium (Playwright) → daphne → fake upstream
or the demo model.

Formatted answers (as they stream, and inert whatever the model writes), saved conversations
(restored on reload, nobody else's, stopped answers kept as stopped, renamed and deleted), the
local-time tool's loop, attached images, phone width, keyboard use, and an axe-core scan in light
and dark. While Playwright runs, the ORM is used only from a worker thread (`in_another_thread`).
"""

from __future__ import annotations

import base64
import json
import os
import re
import struct
import time
import zlib
from pathlib import Path

import pytest

from streaming.models import ConversationMessage
from tests.fake_upstream import FakeUpstream, Reply, ScriptedToolCall
from tests.live_site import (
    BASE_DIR,
    MODEL,
    OTHER_MODEL,
    PASSWORD,
    TEST_API_KEY,
    LiveSite,
    live_site_environment,
)
from tests.test_browser import (
    PACE,
    answer,
    in_another_thread,
    log_in,
    new_context,
    screenshot_dir,
    send,
    wait_until,
)

try:
    from playwright.sync_api import Page, expect
except ImportError:  # the `browser` fixture skips (or fails under CI) with the reason
    Page = expect = None

STREAM_PATH = "/api/chat/stream"
MARKDOWN_PATH = "/api/markdown"
FORMATTED_PIECES = [
    "Three ways to *stream*:\n\n",
    "- **Server-sent",
    " events**, one `data:` line per chunk\n",
    "- NDJSON, one JSON",
    " object per line\n",
    "- WebSockets\n\n",
    "```python\n",
    "for chunk in stream:\n",
    "    print(chunk)\n",
    "```\n\n",
    "| format | framing |\n",
    "|:--|--:|\n",
    "| SSE | `data:` |\n",
    "| NDJSON | newline |\n\n",
    "See [the spec](https://html.spec.whatwg.org/multipage/server-sent-events.html).",
]
DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 375, "height": 740}
UPDATE_DOCS = bool(os.environ.get("UPDATE_DOCS_SCREENSHOT"))
CONVERSATION_URL = re.compile(r".*/c/[0-9a-f-]{36}/$")


def png_bytes(width: int = 3, height: int = 2) -> bytes:
    """A small valid PNG (red pixels)."""
    rows = b"".join(b"\x00" + b"\xdc\x26\x26" * width for _ in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


@pytest.fixture
def bob(transactional_db, django_user_model):
    return django_user_model.objects.create_user("bob", password=PASSWORD)


@pytest.fixture
def chat(live_site, user, browser):
    """The chat page at desktop width, logged in as alice through the login form."""
    context = new_context(browser, live_site, viewport=DESKTOP, timezone_id="Europe/Oslo", locale="en-GB")
    page = context.new_page()
    log_in(page)
    expect(page.get_by_label("Message")).to_be_visible()
    yield page
    context.close()


@pytest.fixture(scope="session")
def unsaved_site(django_db_setup, fake_upstream_server, tmp_path_factory):
    """The site with CHAT_SAVE_CONVERSATIONS off: the page keeps the conversation and sends it whole."""
    site = LiveSite(
        tmp_path_factory.mktemp("unsaved-site") / "daphne.log",
        live_site_environment(
            "chatproxy-unsaved-site",
            OPENAI_API_KEY=TEST_API_KEY,
            OPENAI_BASE_URL=fake_upstream_server.base_url,
            CHAT_DEFAULT_MODEL=MODEL,
            CHAT_ALLOWED_MODELS=f"{MODEL},{OTHER_MODEL}",
            CHAT_SAVE_CONVERSATIONS="false",
        ),
    )
    yield site
    site.stop()


def conversation_id(page: Page) -> str:
    """The conversation the page's URL names, once the page has one."""
    expect(page).to_have_url(CONVERSATION_URL)
    return page.url.rstrip("/").rsplit("/", 1)[-1]


def finished(page: Page, index: int = -1) -> None:
    expect(answer(page, index).locator(".usage")).to_be_visible()


def saved_messages() -> list[tuple[str, str, object]]:
    return in_another_thread(
        lambda: list(ConversationMessage.objects.order_by("id").values_list("role", "status", "content"))
    )


def stream_requests(page: Page) -> list[dict]:
    """The bodies the page posts to the stream API from now on."""
    bodies: list[dict] = []
    page.on(
        "request",
        lambda request: bodies.append(json.loads(request.post_data)) if request.url.endswith(STREAM_PATH) else None,
    )
    return bodies


def serious_violations(page: Page) -> list[tuple[str, str, list]]:
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page)
    return [
        (violation["id"], violation["help"], [node["target"] for node in violation["nodes"]])
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


# --- Formatted answers -------------------------------------------------------------------------


def test_markdown_renders_while_the_answer_streams_and_code_can_be_copied(chat, fake_upstream: FakeUpstream, live_site):
    chat.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_site.url)
    fake_upstream.will_reply(Reply(pieces=FORMATTED_PIECES, delay=PACE))
    in_flight, most_in_flight, renders = [0], [0], []

    def started(request):
        if request.url.endswith(MARKDOWN_PATH):
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
            renders.append(time.monotonic())

    def ended(request):
        if request.url.endswith(MARKDOWN_PATH):
            in_flight[0] -= 1

    chat.on("request", started)
    chat.on("requestfinished", ended)
    chat.on("requestfailed", ended)

    send(chat, "How can a server stream to a browser?")
    reply = answer(chat)
    # Formatted before the answer has ended: the bold list item while the table is still to come.
    expect(reply.locator(".text li strong")).to_have_text("Server-sent events")
    assert reply.evaluate("element => element.classList.contains('streaming')"), "the answer had already ended"
    assert reply.locator(".text table").count() == 0
    finished(chat)

    text = reply.locator(".text")
    expect(text.locator("em")).to_have_text("stream")
    expect(text.locator("ul > li")).to_have_count(3)
    expect(text.locator("pre code")).to_have_text("for chunk in stream:\n    print(chunk)\n")
    expect(text.locator("table th")).to_have_text(["format", "framing"])
    expect(text.locator("table td").nth(1)).to_have_attribute("align", "right")
    link = text.get_by_role("link", name="the spec")
    expect(link).to_have_attribute("href", "https://html.spec.whatwg.org/multipage/server-sent-events.html")
    expect(link).to_have_attribute("rel", "noopener noreferrer nofollow")
    # At most one render in flight, about every 150 ms, while some 2 s of answer streamed.
    assert most_in_flight[0] == 1
    assert 3 <= len(renders) <= len(FORMATTED_PIECES) + 2, renders
    gaps = [later - earlier for earlier, later in zip(renders, renders[1:], strict=False)]
    assert min(gaps[:-1] or [1]) >= 0.1, gaps

    text.get_by_role("button", name="Copy python code").click()
    expect(text.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert chat.evaluate("navigator.clipboard.readText()") == "for chunk in stream:\n    print(chunk)\n"
    chat.screenshot(path=screenshot_dir() / "chat-formatted-answer.png", full_page=True)


def test_a_hostile_answer_stays_inert_in_the_page(chat, fake_upstream: FakeUpstream):
    pieces = [
        "Click [here](javascript:window.__xss=1;alert(1)) or ",
        "[there][x] or <javascript:alert(2)>.\n\n",
        "<script>window.__xss=3;alert(3)</script>\n\n",
        '<img src=x onerror="window.__xss=4;alert(4)"> ',
        '<svg onload="window.__xss=5;alert(5)"></svg> ',
        '<a href="https://example.com" onmouseover="window.__xss=6">hover</a> ',
        "![pic](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoNyk+)\n\n",
        "[x]: vbscript:msgbox(8)\n",
    ]
    fake_upstream.will_reply(Reply(pieces=pieces, delay=0.1))
    dialogs: list[str] = []
    chat.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    send(chat, "Show me your tricks")
    finished(chat)
    reply = answer(chat)
    expect(reply.locator(".text")).to_contain_text("<script>window.__xss=3;alert(3)</script>")
    for paragraph in reply.locator(".text p").all():  # clicks and hovers on whatever the answer made
        paragraph.hover()
        paragraph.click()
    chat.wait_for_timeout(300)  # time for an onerror or onload, had an element been made

    assert dialogs == []
    assert chat.evaluate("typeof window.__xss") == "undefined"
    assert chat.locator("#conversation script, #conversation img, #conversation svg").count() == 0
    handlers = reply.evaluate(
        "element => [...element.querySelectorAll('*')].flatMap(node => [...node.attributes]"
        ".filter(attribute => /^on|^style$|^src$/i.test(attribute.name)).map(attribute => attribute.name))"
    )
    assert handlers == []
    hrefs = reply.evaluate("element => [...element.querySelectorAll('[href]')].map(node => node.getAttribute('href'))")
    assert all(href.startswith(("https://", "http://", "mailto:")) for href in hrefs), hrefs


# --- Saved conversations -----------------------------------------------------------------------


def test_a_reload_restores_the_conversation_in_one_markdown_request(chat, fake_upstream: FakeUpstream):
    fake_upstream.will_reply(Reply(pieces=["**Paris**", "."]), Reply(pieces=["About ", "*two* million."]))
    send(chat, "What is the capital of France?")
    finished(chat)
    identifier = conversation_id(chat)
    current = chat.get_by_role("link", name="What is the capital of France?")
    expect(current).to_have_attribute("aria-current", "page")
    chat.get_by_label("Message").fill("How many people live there?")
    chat.get_by_label("Message").press("Enter")
    finished(chat, 1)
    assert fake_upstream.requests[-1].json()["messages"][-3:] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "**Paris**."},
        {"role": "user", "content": "How many people live there?"},
    ]

    markdown_calls: list[str] = []
    chat.on(
        "request",
        lambda request: markdown_calls.append(request.post_data) if request.url.endswith(MARKDOWN_PATH) else None,
    )
    chat.reload()
    expect(chat.locator(".message.user")).to_have_text(
        ["What is the capital of France?", "How many people live there?"]
    )
    expect(answer(chat, 0).locator(".text strong")).to_have_text("Paris")
    expect(answer(chat, 1).locator(".text em")).to_have_text("two")
    expect(answer(chat, 1).locator(".text")).to_have_text("About two million.")
    assert chat.url.endswith(f"/c/{identifier}/")
    expect(chat).to_have_title("What is the capital of France? · Chat · chatproxy")
    expect(chat.get_by_role("link", name="What is the capital of France?")).to_have_attribute("aria-current", "page")
    assert [json.loads(body) for body in markdown_calls] == [{"texts": ["**Paris**.", "About *two* million."]}]

    # The next question continues it: only the new message is sent, with the conversation's id.
    bodies = stream_requests(chat)
    fake_upstream.will_reply(Reply(pieces=["Yes."]))
    send(chat, "Is it big?")
    finished(chat, 2)
    assert bodies == [
        {"conversation": identifier, "messages": [{"role": "user", "content": "Is it big?"}], "model": MODEL}
    ]
    assert len(fake_upstream.requests[-1].json()["messages"]) == 5


def test_one_user_cannot_see_another_users_conversation(bob, chat, browser, live_site, fake_upstream: FakeUpstream):
    send(chat, "Alice's secret plan")
    finished(chat)
    identifier = conversation_id(chat)

    context = new_context(browser, live_site, viewport=DESKTOP)
    page = context.new_page()
    log_in(page, "bob")
    expect(page.get_by_text("No saved conversations yet.")).to_be_visible()
    assert page.get_by_role("link", name="Alice's secret plan").count() == 0
    response = page.goto(f"/c/{identifier}/")
    assert response.status == 404
    assert "Alice's secret plan" not in page.content()
    api = page.request.get(f"/api/conversations/{identifier}")
    assert api.status == 404 and api.json()["error"]["code"] == "conversation_not_found"
    context.close()


def test_a_stopped_answer_is_saved_as_stopped(chat, fake_upstream: FakeUpstream):
    fake_upstream.will_reply(Reply(pieces=[f"word{i} " for i in range(100)], delay=0.1))
    send(chat, "Count to a hundred, slowly.")
    expect(answer(chat).locator(".text")).to_contain_text("word3")
    chat.keyboard.press("Escape")  # stops it, as the Stop button does
    expect(answer(chat).get_by_text("Stopped.")).to_be_visible()
    shown = answer(chat).locator(".text").text_content()
    identifier = conversation_id(chat)
    assert wait_until(lambda: any(status == "stopped" for _, status, _ in saved_messages()))

    chat.reload()
    expect(answer(chat).get_by_text("Stopped.")).to_be_visible()
    restored = answer(chat).locator(".text")
    expect(restored).to_contain_text(shown)
    # What the server had relayed when the page let go: what the page showed, or a word or two more.
    saved = restored.text_content()
    assert saved.startswith(shown) and shown.startswith("word0 word1 word2 word3") and "word99" not in saved
    assert chat.url.endswith(f"/c/{identifier}/")
    assert ("assistant", "stopped") in [(role, status) for role, status, _ in saved_messages()]


def test_rename_and_delete_conversations(chat, fake_upstream: FakeUpstream, live_site):
    send(chat, "First question")
    finished(chat)
    first = conversation_id(chat)
    chat.get_by_role("button", name="New chat").click()
    expect(chat).to_have_url(f"{live_site.url}/")
    expect(chat.locator("#conversation .message")).to_have_count(0)
    send(chat, "Second question")
    finished(chat)
    assert conversation_id(chat) != first
    items = chat.locator("#conversation-list li .conversation-link")
    expect(items).to_have_text(["Second question", "First question"])

    # Keyboard only: Tab from the link to its Rename button, type, Enter saves.
    chat.get_by_role("link", name="First question").focus()
    chat.keyboard.press("Tab")
    expect(chat.get_by_role("button", name="Rename “First question”")).to_be_focused()
    chat.keyboard.press("Enter")
    title = chat.get_by_role("textbox", name="New title for “First question”")
    expect(title).to_be_focused()
    title.fill("Questions about Paris")
    title.press("Enter")
    expect(items).to_have_text(["Second question", "Questions about Paris"])
    expect(chat.locator("#list-status")).to_have_text("Renamed to “Questions about Paris”.")

    # Escape cancels.
    chat.get_by_role("button", name="Rename “Second question”").click()
    chat.get_by_role("textbox", name="New title for “Second question”").fill("Never mind")
    chat.keyboard.press("Escape")
    expect(items).to_have_text(["Second question", "Questions about Paris"])
    chat.reload()
    expect(items).to_have_text(["Second question", "Questions about Paris"])

    # Delete asks first; dismissed, nothing happens.
    chat.once("dialog", lambda dialog: dialog.dismiss())
    chat.get_by_role("button", name="Delete “Second question”").click()
    expect(items).to_have_count(2)
    chat.once("dialog", lambda dialog: dialog.accept())
    chat.get_by_role("button", name="Delete “Second question”").click()
    expect(items).to_have_text(["Questions about Paris"])
    expect(chat.locator("#list-status")).to_have_text("Deleted “Second question”.")
    expect(chat.locator("#conversation .message")).to_have_count(0)
    assert "/c/" not in chat.url
    chat.reload()
    expect(items).to_have_text(["Questions about Paris"])
    assert chat.goto(f"/c/{first}/").status == 200


def test_a_busy_conversation_is_retried_until_it_is_free(chat, fake_upstream: FakeUpstream):
    send(chat, "Hello")
    finished(chat)
    refusals = []

    def busy_twice(route):
        if len(refusals) < 2:
            refusals.append(route.request.post_data)
            body = {
                "error": {"message": "still streaming", "type": "invalid_request_error", "code": "conversation_busy"}
            }
            route.fulfill(status=409, json=body)
        else:
            route.continue_()

    chat.route(f"**{STREAM_PATH}", busy_twice)
    fake_upstream.will_reply(Reply(pieces=["Here", " now."]))
    send(chat, "Still there?")
    finished(chat, 1)
    expect(answer(chat).locator(".text")).to_have_text("Here now.")
    assert len(refusals) == 2
    assert answer(chat).get_by_role("alert").count() == 0


def test_left_out_history_is_said(chat, fake_upstream: FakeUpstream):
    def omitted(route):
        response = route.fetch()
        route.fulfill(response=response, headers={**response.headers, "chatproxy-history-omitted": "3"})

    chat.route(f"**{STREAM_PATH}", omitted)
    send(chat, "Hello")
    finished(chat)
    expect(chat.get_by_role("status").filter(has_text="3 earlier messages were left out")).to_have_text(
        "3 earlier messages were left out to fit the model's input limit."
    )


def test_without_saving_the_page_sends_the_whole_conversation(unsaved_site, user, browser, fake_upstream):
    context = new_context(browser, unsaved_site)
    page = context.new_page()
    log_in(page)
    assert page.locator("#conversations-panel").count() == 0
    bodies = stream_requests(page)
    fake_upstream.will_reply(Reply(pieces=["Paris."]), Reply(pieces=["Two million."]))
    send(page, "Capital of France?")
    finished(page)
    send(page, "People?")
    finished(page, 1)
    assert "conversation" not in bodies[0] and "conversation" not in bodies[1]
    assert bodies[1]["messages"] == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "People?"},
    ]
    assert "/c/" not in page.url
    context.close()


# --- The local-time tool -----------------------------------------------------------------------


def test_the_tool_loop_runs_the_tool_in_the_browser_and_sends_its_result(chat, fake_upstream: FakeUpstream):
    call = ScriptedToolCall("call_time_1", "get_local_time", ('{"time', 'zone": "Euro', 'pe/Oslo"}'))
    fake_upstream.will_reply(
        Reply(pieces=[], tool_calls=[call], delay=0.05), Reply(pieces=["In Oslo it is ", "**now**."])
    )
    bodies = stream_requests(chat)

    chat.get_by_label("Let the model check your local time (example tool)").check()
    send(chat, "What time is it in Oslo?")
    block = chat.get_by_role("group", name="Tool call: get_local_time")
    expect(block.locator("code").first).to_have_text("get_local_time")
    expect(block.locator(".tool-arguments")).to_have_text('{"timezone": "Europe/Oslo"}')
    expect(block.locator(".tool-result")).to_contain_text("Europe/Oslo")
    finished(chat, 1)
    expect(answer(chat).locator(".text")).to_have_text("In Oslo it is now.")
    expect(answer(chat).locator(".text strong")).to_have_text("now")

    assert [body["tools"][0]["function"]["name"] for body in bodies] == ["get_local_time", "get_local_time"]
    result = block.locator(".tool-result code").text_content()
    identifier = conversation_id(chat)
    assert bodies[1]["conversation"] == identifier
    assert bodies[1]["messages"] == [{"role": "tool", "tool_call_id": "call_time_1", "content": result}]
    upstream_messages = fake_upstream.requests[-1].json()["messages"]
    assert upstream_messages[-2]["tool_calls"] == [call.as_message_tool_call()]
    assert upstream_messages[-1] == {"role": "tool", "tool_call_id": "call_time_1", "content": result}

    chat.reload()
    restored = chat.get_by_role("group", name="Tool call: get_local_time")
    expect(restored.locator(".tool-result code")).to_have_text(result)
    expect(answer(chat).locator(".text")).to_have_text("In Oslo it is now.")


def test_the_tool_loop_stops_after_three_rounds(chat, fake_upstream: FakeUpstream):
    calls = [ScriptedToolCall(f"call_{n}", "get_local_time", ("{}",)) for n in range(5)]
    fake_upstream.will_reply(*(Reply(pieces=[], tool_calls=[call]) for call in calls))
    bodies = stream_requests(chat)
    chat.get_by_label("Let the model check your local time (example tool)").check()
    send(chat, "Keep asking for the time")
    expect(chat.get_by_text("The model asked for more than 3 tool rounds; the page stopped there.")).to_be_visible()
    expect(chat.get_by_role("button", name="Send")).to_be_enabled()
    assert len(bodies) == 4
    assert [body.get("tool_choice") for body in bodies] == [None, None, None, "none"]
    assert chat.get_by_role("group", name="Tool call: get_local_time").count() == 4
    assert chat.locator(".tool-result:not([hidden])").count() == 3


def test_the_demo_model_calls_the_local_time_tool_and_quotes_its_result(demo_site, user, browser):
    context = new_context(browser, demo_site, viewport=DESKTOP, timezone_id="Asia/Tokyo", locale="en-US")
    page = context.new_page()
    log_in(page)
    expect(page.locator("#demo-label")).to_be_visible()
    page.get_by_label("Let the model check your local time (example tool)").check()
    send(page, "What time is it for me? timezone: Asia/Tokyo")

    block = page.get_by_role("group", name="Tool call: get_local_time")
    expect(block.locator(".tool-arguments")).to_have_text('{"timezone":"Asia/Tokyo"}')
    expect(block.locator(".tool-result")).to_contain_text("Asia/Tokyo")
    finished(page, 1)
    result = block.locator(".tool-result code").text_content()
    expect(answer(page).locator(".text")).to_contain_text(f'The tool get_local_time returned: "{result}"')
    shot = screenshot_dir() / "chat-tool-call.png"
    page.screenshot(path=shot, full_page=True)
    if UPDATE_DOCS:
        page.screenshot(path=BASE_DIR / "docs" / "chat-tool-call.png", full_page=True)
    context.close()


# --- Images ------------------------------------------------------------------------------------


def test_attached_and_pasted_images_reach_the_upstream(chat, fake_upstream: FakeUpstream, tmp_path: Path):
    png = png_bytes()
    picture = tmp_path / "red.png"
    picture.write_bytes(png)
    with chat.expect_file_chooser() as chooser:
        chat.get_by_role("button", name="Attach image").click()
    chooser.value.set_files(picture)
    expect(chat.get_by_role("img", name="Attached: red.png")).to_be_visible()

    # A pasted screenshot joins it.
    chat.get_by_label("Message").evaluate(
        """(box, bytes) => {
            const data = new DataTransfer();
            data.items.add(new File([new Uint8Array(bytes)], "pasted.png", {type: "image/png"}));
            box.dispatchEvent(new ClipboardEvent("paste", {clipboardData: data, bubbles: true, cancelable: true}));
        }""",
        list(png),
    )
    expect(chat.get_by_role("img", name="Attached: pasted.png")).to_be_visible()

    send(chat, "What colour are these?")
    finished(chat)
    expect(chat.get_by_role("list", name="Attached images")).to_be_hidden()
    sent = fake_upstream.requests[-1].json()["messages"][-1]
    assert sent == {
        "role": "user",
        "content": [
            {"type": "text", "text": "What colour are these?"},
            {"type": "image_url", "image_url": {"url": data_url(png)}},
            {"type": "image_url", "image_url": {"url": data_url(png)}},
        ],
    }
    expect(chat.locator(".message.user").last.get_by_role("img")).to_have_count(2)
    chat.reload()
    expect(chat.locator(".message.user").last.get_by_role("img")).to_have_count(2)


def test_images_beyond_the_limit_are_refused_and_one_can_be_removed(chat, tmp_path: Path):
    files = []
    for n in range(5):
        path = tmp_path / f"picture{n}.png"
        path.write_bytes(png_bytes(2 + n, 2))
        files.append(path)
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_bytes(b"this is not a picture")
    with chat.expect_file_chooser() as chooser:
        chat.get_by_role("button", name="Attach image").click()
    chooser.value.set_files([not_an_image, *files])

    attached = chat.get_by_role("list", name="Attached images").get_by_role("img")
    expect(attached).to_have_count(4)
    status = chat.locator("#attachment-status")
    expect(status).to_contain_text("“notes.png” could not be read as an image.")
    expect(status).to_contain_text("A message can carry at most 4 images.")
    chat.get_by_role("button", name="Remove picture1.png").click()
    expect(attached).to_have_count(3)
    expect(status).to_have_text("Removed picture1.png.")


def test_the_demo_model_acknowledges_an_image(demo_site, user, browser, tmp_path: Path):
    picture = tmp_path / "red.png"
    picture.write_bytes(png_bytes())
    context = new_context(browser, demo_site)
    page = context.new_page()
    log_in(page)
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach image").click()
    chooser.value.set_files(picture)
    send(page, "Look at this")
    finished(page)
    expect(answer(page).locator(".text")).to_contain_text("I received 1 image;")
    context.close()


# --- Phone width, keyboard, accessibility ------------------------------------------------------


def fill_a_conversation(page: Page, fake_upstream: FakeUpstream) -> None:
    """Two conversations, the second with a formatted answer and a tool call."""
    fake_upstream.will_reply(
        Reply(pieces=["Use `asyncio.TaskGroup`."]),
        Reply(pieces=FORMATTED_PIECES),
        Reply(pieces=[], tool_calls=[ScriptedToolCall("call_1", "get_local_time", ("{}",))]),
        Reply(pieces=["It is ", "evening where you are."]),
    )
    send(page, "How do I run tasks concurrently in Python?")
    finished(page)
    page.get_by_role("button", name="New chat").click()
    send(page, "How can a server stream to a browser?")
    finished(page)
    page.get_by_label("Let the model check your local time (example tool)").check()
    send(page, "And what time is it here?")
    finished(page, 2)


def test_at_phone_width_nothing_scrolls_sideways_and_the_list_is_a_panel(chat, fake_upstream: FakeUpstream):
    fill_a_conversation(chat, fake_upstream)
    chat.set_viewport_size(PHONE)
    chat.reload()
    finished(chat)
    toggle = chat.get_by_role("button", name="Conversations")
    expect(toggle).to_have_attribute("aria-expanded", "false")
    expect(chat.locator("#conversation-list")).to_be_hidden()
    assert chat.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    chat.screenshot(path=screenshot_dir() / "chat-phone.png", full_page=True)
    if UPDATE_DOCS:
        chat.screenshot(path=BASE_DIR / "docs" / "chat-phone.png", full_page=True)

    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(chat.get_by_role("link", name="How can a server stream to a browser?")).to_have_attribute(
        "aria-current", "page"
    )
    assert chat.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    chat.screenshot(path=screenshot_dir() / "chat-phone-conversations.png", full_page=True)

    chat.set_viewport_size(DESKTOP)
    expect(chat.locator("#conversation-list")).to_be_visible()
    expect(toggle).to_be_hidden()
    chat.screenshot(path=screenshot_dir() / "chat-desktop.png")
    if UPDATE_DOCS:
        chat.screenshot(path=BASE_DIR / "docs" / "chat-conversations.png", full_page=True)


def test_keyboard_only_enter_sends_shift_enter_adds_a_line_escape_stops(chat, fake_upstream: FakeUpstream):
    fake_upstream.will_reply(Reply(pieces=["One", " two."]), Reply(pieces=[f"w{i} " for i in range(80)], delay=0.1))
    box = chat.get_by_label("Message")
    box.focus()
    chat.keyboard.type("first line")
    chat.keyboard.press("Shift+Enter")
    chat.keyboard.type("second line")
    expect(box).to_have_value("first line\nsecond line")
    chat.keyboard.press("Enter")
    finished(chat)
    expect(chat.locator(".message.user").last).to_have_text("first line\nsecond line")
    expect(box).to_be_focused()

    chat.keyboard.type("A long one, please")
    chat.keyboard.press("Enter")
    expect(answer(chat).locator(".text")).to_contain_text("w2")
    chat.keyboard.press("Escape")
    expect(answer(chat).get_by_text("Stopped.")).to_be_visible()

    # Tab order: the message box, Send, (Stop, while an answer streams), Attach image, Model, the tool.
    box.focus()
    chat.keyboard.press("Tab")
    expect(chat.get_by_role("button", name="Send")).to_be_focused()
    chat.keyboard.press("Tab")
    expect(chat.get_by_role("button", name="Attach image")).to_be_focused()
    chat.keyboard.press("Tab")
    expect(chat.get_by_label("Model", exact=True)).to_be_focused()
    chat.keyboard.press("Tab")
    expect(chat.get_by_label("Let the model check your local time (example tool)")).to_be_focused()
    outline = chat.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline == "solid", "the focused control shows no focus outline"


def test_the_accessibility_scan_finds_no_serious_violations(chat, fake_upstream: FakeUpstream, tmp_path: Path):
    fill_a_conversation(chat, fake_upstream)
    picture = tmp_path / "red.png"
    picture.write_bytes(png_bytes())
    with chat.expect_file_chooser() as chooser:
        chat.get_by_role("button", name="Attach image").click()
    chooser.value.set_files(picture)
    expect(chat.get_by_role("img", name="Attached: red.png")).to_be_visible()

    found = {}
    for scheme in ("light", "dark"):
        chat.emulate_media(color_scheme=scheme)
        chat.set_viewport_size(DESKTOP)
        found[f"desktop {scheme}"] = serious_violations(chat)
        chat.screenshot(path=screenshot_dir() / f"chat-axe-desktop-{scheme}.png", full_page=True)
        chat.set_viewport_size(PHONE)
        toggle = chat.get_by_role("button", name="Conversations")
        found[f"phone {scheme}"] = serious_violations(chat)
        toggle.click()
        found[f"phone {scheme}, conversations open"] = serious_violations(chat)
        chat.screenshot(path=screenshot_dir() / f"chat-axe-phone-{scheme}.png", full_page=True)
        toggle.click()
    assert found == {name: [] for name in found}

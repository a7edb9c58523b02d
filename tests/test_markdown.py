"""Answers' Markdown as HTML: what it formats, that model text can never carry script or
attributes into the page, and the endpoint's login, CSRF and bounds."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest
from django.test import Client

from streaming.markdown import render_markdown
from streaming.markdown_views import MAX_TEXTS, max_batch_chars
from tests.live_site import PASSWORD

URL = "/api/markdown"
SAFE_TAGS = {"p", "br", "hr", "h1", "h2", "h3", "h4", "h5", "h6", "strong", "em", "del", "s", "code", "pre"}
SAFE_TAGS |= {"blockquote", "ul", "ol", "li", "a", "table", "thead", "tbody", "tr", "th", "td"}
SAFE_ATTRIBUTES = {"a": {"href", "rel"}, "code": {"class"}, "th": {"align"}, "td": {"align"}}


class Elements(HTMLParser):
    """The elements and attributes a browser would build from the HTML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str | None]]] = []
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    handle_startendtag = handle_starttag


def assert_inert(html: str) -> None:
    """Only the allowlist's tags and attributes; links only to http, https and mailto."""
    for tag, attributes in Elements(html).found:
        assert tag in SAFE_TAGS, html
        assert set(attributes) <= SAFE_ATTRIBUTES.get(tag, set()), html
        href = attributes.get("href")
        assert href is None or href.startswith(("https://", "http://", "mailto:")), html
        assert attributes.get("class") is None or re.fullmatch(r"language-[\w+#.-]+", attributes["class"]), html


# --- What it formats ---------------------------------------------------------------------------


def test_paragraphs_emphasis_and_inline_code():
    html = render_markdown("Some *emphasis*, **strong**, ~~gone~~ and `code`.\n\nA second paragraph.")
    assert html == (
        "<p>Some <em>emphasis</em>, <strong>strong</strong>, <s>gone</s> and <code>code</code>.</p>\n"
        "<p>A second paragraph.</p>"
    )


def test_a_single_line_break_is_kept():
    assert render_markdown("first line\nsecond line") == "<p>first line<br>\nsecond line</p>"


def test_lists_headings_and_quotes():
    html = render_markdown("# Plan\n\n- one\n- two\n\n1. first\n2. second\n\n> quoted")
    assert "<h1>Plan</h1>" in html
    assert "<ul>\n<li>one</li>\n<li>two</li>\n</ul>" in html
    assert "<ol>\n<li>first</li>\n<li>second</li>\n</ol>" in html
    assert "<blockquote>\n<p>quoted</p>\n</blockquote>" in html


def test_links_open_safely():
    html = render_markdown(
        "See [the docs](https://example.com/docs), <https://example.org> or [mail](mailto:a@example.com)."
    )
    assert '<a href="https://example.com/docs" rel="noopener noreferrer nofollow">the docs</a>' in html
    assert '<a href="https://example.org" rel="noopener noreferrer nofollow">https://example.org</a>' in html
    assert '<a href="mailto:a@example.com" rel="noopener noreferrer nofollow">mail</a>' in html


def test_tables_keep_their_alignment_as_align_only():
    html = render_markdown("| Name | Count | Note |\n|:--|--:|:-:|\n| apples | 3 | ripe |")
    assert '<th align="left">Name</th>' in html
    assert '<th align="right">Count</th>' in html
    assert '<td align="center">ripe</td>' in html
    assert "style" not in html


def test_fenced_code_keeps_its_language_and_its_text():
    html = render_markdown('```python\nprint("<b>hi</b>")\n```')
    assert html == '<pre><code class="language-python">print("&lt;b&gt;hi&lt;/b&gt;")\n</code></pre>'


def test_an_image_becomes_a_link_to_it():
    html = render_markdown("![a cat](https://example.com/cat.png)")
    assert html == '<p><a href="https://example.com/cat.png" rel="noopener noreferrer nofollow">a cat</a></p>'


# --- Model text can never become script or attributes ------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        "before <script>alert(1)</script> after",
        "<img src=x onerror=alert(1)>",
        '<svg onload="alert(1)"><circle r="1"/></svg>',
        '<div onclick="alert(1)">click</div>',
        '<a href="javascript:alert(1)">raw link</a>',
        "<iframe src=https://evil.example></iframe>",
        '<p style="position:fixed" onmouseover="alert(1)">x</p>',
        "<style>body{display:none}</style>",
        "<!-- <script>alert(1)</script> -->",
        "inline <b onmouseover=alert(1)>bold</b> html",
    ],
)
def test_raw_html_comes_out_as_text(text):
    html = render_markdown(text)
    assert_inert(html)
    assert "&lt;" in html  # shown to the reader, escaped


@pytest.mark.parametrize(
    "text",
    [
        "[click](javascript:alert(1))",
        "[click](JaVaScRiPt:alert(1))",
        "[click](java&#09;script:alert(1))",
        "[click](  javascript:alert(1)  )",
        "[click](vbscript:msgbox(1))",
        "[click](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "[click](data:image/png;base64,iVBORw0KGgo=)",
        "[click][ref]\n\n[ref]: javascript:alert(1)",
        "[click][ref]\n\n[ref]: data:text/html,<script>alert(1)</script>",
        "[click][ref]\n\n[ref]: vbscript:msgbox(1)",
        "<javascript:alert(1)>",
        "<vbscript:msgbox(1)>",
        "<data:text/html,alert(1)>",
        "![x](javascript:alert(1))",
        "![x](data:image/svg+xml;base64,PHN2ZyBvbmxvYWQ9YWxlcnQoMSk+)",
        "[relative](/accounts/logout/)",
        "[protocol-relative](//evil.example/)",
        '[x](https://example.com "title" onmouseover=alert(1))',
        '```" onmouseover="alert(1)\ncode\n```',
    ],
)
def test_links_to_anything_but_http_https_and_mailto_lose_their_target(text):
    html = render_markdown(text)
    assert_inert(html)
    assert not [attributes for tag, attributes in Elements(html).found if tag == "a" and "href" in attributes], html


def test_a_code_block_takes_only_the_first_word_of_its_info_string_as_its_language():
    assert render_markdown("```js onclick=x\nx\n```") == '<pre><code class="language-js">x\n</code></pre>'


# --- The endpoint ------------------------------------------------------------------------------


@pytest.fixture
def alice(db, django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


def logged_in(user, *, enforce_csrf_checks: bool = False) -> Client:
    client = Client(enforce_csrf_checks=enforce_csrf_checks)
    client.force_login(user)
    return client


def post(client: Client, body: object, **headers: str):
    return client.post(URL, data=json.dumps(body), content_type="application/json", headers=headers)


def test_the_endpoint_renders_each_text_in_order(alice):
    response = post(logged_in(alice), {"texts": ["**one**", "", "<script>x</script>"]})
    assert response.status_code == 200
    assert response.json() == {"html": ["<p><strong>one</strong></p>", "", "<p>&lt;script&gt;x&lt;/script&gt;</p>"]}
    assert "no-cache" in response["Cache-Control"]


def test_logged_out_gets_401_json(db):
    response = post(Client(), {"texts": ["hi"]})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_a_post_without_the_csrf_token_is_refused(alice):
    client = logged_in(alice, enforce_csrf_checks=True)
    refused = post(client, {"texts": ["hi"]})
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "csrf_failed"

    client.get("/")  # the chat page sets the csrftoken cookie
    accepted = post(client, {"texts": ["hi"]}, X_CSRFToken=client.cookies["csrftoken"].value)
    assert accepted.status_code == 200
    assert accepted.json() == {"html": ["<p>hi</p>"]}


def test_only_post(alice):
    response = logged_in(alice).get(URL)
    assert response.status_code == 405
    assert response["Allow"] == "POST"
    assert response.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'texts' must be a list of strings."),
        ({"texts": "hi"}, "'texts' must be a list of strings."),
        ({"texts": ["a", "b", "c", 4]}, "'texts[3]' must be a string."),
        ({"texts": [None]}, "'texts[0]' must be a string."),
        ({"texts": [], "extra": 1}, "Unknown field(s): 'extra'. Allowed fields: texts."),
    ],
)
def test_malformed_bodies_are_400_naming_the_field(alice, body, message):
    response = post(logged_in(alice), body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"] == message
    assert error["type"] == "invalid_request_error"


def test_a_body_that_is_not_json_is_400(alice):
    response = logged_in(alice).post(URL, data=b"{not json", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_at_most_200_texts(alice):
    client = logged_in(alice)
    assert post(client, {"texts": ["x"] * MAX_TEXTS}).status_code == 200
    response = post(client, {"texts": ["x"] * (MAX_TEXTS + 1)})
    assert response.status_code == 400
    assert response.json()["error"] == {
        "message": f"'texts' makes {MAX_TEXTS + 1} texts; at most {MAX_TEXTS} are allowed.",
        "type": "invalid_request_error",
        "code": "too_many_texts",
    }


def test_the_characters_of_a_batch_are_bounded_by_an_input_and_an_answer(alice, settings):
    settings.CHAT_MAX_INPUT_CHARS = 1000
    settings.CHAT_MAX_TOKENS = 50
    limit = max_batch_chars()
    assert limit == 1000 + 50 * 8
    client = logged_in(alice)
    assert post(client, {"texts": ["a" * (limit - 10), "b" * 10]}).status_code == 200
    response = post(client, {"texts": ["a" * (limit - 10), "b" * 11]})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "input_too_long"
    assert str(limit) in response.json()["error"]["message"]

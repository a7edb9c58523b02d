"""Model answers' Markdown as HTML the chat page may insert: parsed by markdown-it-py, sanitized by nh3.

Two layers, so that neither alone has to be right. markdown-it-py parses CommonMark (plus tables
and strikethrough) with raw HTML off: a `<script>` or `<img onerror>` in the model's text comes out
as escaped text, and it refuses `javascript:`, `vbscript:`, `file:` and most `data:` link targets.
nh3 (the Rust sanitizer ammonia) then keeps only the allowlist below: formatting tags, links to
http, https and mailto (with `rel="noopener noreferrer nofollow"`), a table cell's alignment, and a
code block's `language-*` class; no other attribute, so nothing that runs code.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import nh3
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markdown_it.renderer import RendererHTML
from markdown_it.rules_core import StateCore
from markdown_it.token import Token
from markdown_it.utils import EnvType, OptionsDict

ALLOWED_TAGS = {
    "p",
    "br",
    "hr",
    *(f"h{level}" for level in range(1, 7)),
    "strong",
    "em",
    "del",
    "s",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "a",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
}
LINK_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"
CELL_ALIGNMENTS = {"left", "center", "right"}
_CODE_LANGUAGE = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")


def _cell_alignment(state: StateCore) -> None:
    """A table cell's alignment as `align` (markdown-it writes `style="text-align:…"`): no style
    attribute needs to pass the sanitizer."""
    for token in state.tokens:
        if token.type in ("th_open", "td_open"):
            style = token.attrs.pop("style", None)
            if isinstance(style, str) and style.startswith("text-align:"):
                token.attrSet("align", style.removeprefix("text-align:"))


def _image_as_link(self: RendererHTML, tokens: Sequence[Token], idx: int, options: OptionsDict, env: EnvType) -> str:
    """An image becomes a link to it, named by its alt text: the page loads nothing the model names."""
    token = tokens[idx]
    source = str(token.attrGet("src") or "")
    label = self.renderInlineAsText(token.children or [], options, env) or source
    return f'<a href="{escapeHtml(source)}">{escapeHtml(label)}</a>'


def _kept_attribute(tag: str, attribute: str, value: str) -> str | None:
    if attribute == "class":
        return value if tag == "code" and _CODE_LANGUAGE.fullmatch(value) else None
    if attribute == "href":
        # Relative links are denied by the cleaner; scheme-relative ones ("//host") too.
        return None if value.startswith("//") else value
    return value


_parser = MarkdownIt("commonmark", {"html": False, "breaks": True}).enable(["table", "strikethrough"])
_parser.core.ruler.push("cell_alignment", _cell_alignment)
_parser.add_render_rule("image", _image_as_link)

_cleaner = nh3.Cleaner(
    tags=ALLOWED_TAGS,
    attributes={"*": set(), "a": {"href"}, "code": {"class"}},
    tag_attribute_values={"th": {"align": CELL_ALIGNMENTS}, "td": {"align": CELL_ALIGNMENTS}},
    attribute_filter=_kept_attribute,
    url_schemes=LINK_SCHEMES,
    url_relative="deny",
    link_rel=LINK_REL,
    strip_comments=True,
)


def render_markdown(text: str) -> str:
    """The text's Markdown as sanitized HTML (no surrounding whitespace, so a one-paragraph answer's
    text content is the answer's words exactly)."""
    return _cleaner.clean(_parser.render(text)).strip()

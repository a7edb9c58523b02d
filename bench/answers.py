"""What the benchmark's fake upstream answers, and how a request asks for it.

A request cannot carry benchmark options past the relay as headers (the relay makes its own
upstream request), so the schedule travels in the user message: `bench tag=… chunks=… delay_ms=…`.
Both the upstream (to render the answer) and the load generator (to verify what arrived) derive
the answer from the spec alone, so the expected text never has to be sent around.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from functools import lru_cache

MODEL = "bench-model"
PROMPT_TOKENS = 10
# Content pieces chosen to catch framing bugs: JSON escapes, multi-byte UTF-8, an emoji, a newline.
VOCABULARY = (
    " The",
    " relay",
    " passes",
    ' "quoted"',
    " back\\slash",
    " café",
    " 日本語",
    " 🚀",
    " line\nbreak",
    " tab\tstop",
    " chunk",
    ".",
)


@dataclass(frozen=True)
class StreamSpec:
    """One answer: `chunks` content chunks, one every `delay_ms` (0 = all at once)."""

    tag: str
    chunks: int
    delay_ms: float
    # Ask the upstream to record when it sent each content chunk (for the abort measurement).
    trace: bool = False

    @classmethod
    def new(cls, chunks: int, delay_ms: float, trace: bool = False) -> StreamSpec:
        return cls(secrets.token_hex(8), chunks, delay_ms, trace)

    def prompt(self) -> str:
        return f"bench tag={self.tag} chunks={self.chunks} delay_ms={self.delay_ms:g} trace={int(self.trace)}"

    @classmethod
    def from_prompt(cls, prompt: str) -> StreamSpec | None:
        words = prompt.split()
        if not words or words[0] != "bench":
            return None
        fields = dict(word.partition("=")[::2] for word in words[1:])
        try:
            return cls(
                tag=fields["tag"],
                chunks=int(fields["chunks"]),
                delay_ms=float(fields["delay_ms"]),
                trace=fields.get("trace") == "1",
            )
        except (KeyError, ValueError):
            return None

    @property
    def completion_id(self) -> str:
        """The `id` of every chunk of this answer, so a chunk relayed to the wrong stream is caught."""
        return f"chatcmpl-{self.tag}"

    @property
    def response_id(self) -> str:
        """A Responses answer's `response.id` (in its lifecycle events), tagged like `completion_id`."""
        return f"resp_{self.tag}"

    @property
    def item_id(self) -> str:
        """The `item_id` of a Responses answer's message item, which every text delta carries."""
        return f"msg_{self.tag}"

    @property
    def paced_seconds(self) -> float:
        """How long the upstream takes to send the whole answer."""
        return self.chunks * self.delay_ms / 1000

    def expected_text(self) -> str:
        return expected_text(self.chunks)


def answer_pieces(chunks: int) -> list[str]:
    return [VOCABULARY[index % len(VOCABULARY)] for index in range(chunks)]


@lru_cache(maxsize=64)
def expected_text(chunks: int) -> str:
    return "".join(answer_pieces(chunks))

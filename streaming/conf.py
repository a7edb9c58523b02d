"""The app's settings: each one read from the site's Django settings, else the default here.

A site that installs the app sets only what it wants to change, in whatever way it configures
Django; this project's `chatproxy/settings.py` reads them from the environment. Values are read
live on every access, so `override_settings` and pytest-django's `settings` fixture apply at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.conf import settings

DEMO_MODEL = "chatproxy-demo"


class AppSettings:
    """Attribute access to the app's settings; each class attribute is the app's default."""

    # The upstream: any OpenAI-compatible server. With no key the built-in demo model answers.
    OPENAI_API_KEY: str = ""
    OPENAI_BASE_URL: str = "https://api.openai.com/v1"
    OPENAI_CONNECT_TIMEOUT: float = 5.0
    # Seconds from the request to the first token of the answer (reasoning models think first).
    OPENAI_FIRST_TOKEN_TIMEOUT: float = 120.0
    # The longest silence tolerated between two chunks once the answer has begun.
    OPENAI_IDLE_TIMEOUT: float = 60.0
    OPENAI_MAX_RETRIES: int = 2
    # Upstream connections per process; requests beyond it wait up to the connect timeout, then get 503.
    OPENAI_MAX_CONNECTIONS: int = 100
    # The request field that carries the per-user pseudonym upstream: safety_identifier, user, or "" for none.
    OPENAI_USER_FIELD: str = "safety_identifier"

    CHAT_DEMO_MODEL: str = DEMO_MODEL
    # Seconds between the demo model's tokens.
    CHAT_DEMO_TOKEN_DELAY: float = 0.04

    # Requests asking for more completion tokens are clamped to this; requests asking for none get it.
    CHAT_MAX_TOKENS: int = 1024
    CHAT_MAX_MESSAGES: int = 100
    # Characters of text across a request: message contents, text and refusal parts, tool-call arguments
    # (Responses: also instructions, function-call outputs, reasoning text and encrypted reasoning).
    CHAT_MAX_INPUT_CHARS: int = 100_000
    # Images (image_url parts) per request, and the longest image URL (a data URL's bytes) allowed.
    CHAT_MAX_IMAGES: int = 4
    CHAT_MAX_IMAGE_URL_BYTES: int = 2 * 1024 * 1024
    # Function tools per request, and the JSON size of all their definitions together.
    CHAT_MAX_TOOLS: int = 128
    CHAT_MAX_TOOLS_BYTES: int = 64 * 1024
    # Choices per request (`n`): each one is a whole answer, paid for.
    CHAT_MAX_CHOICES: int = 1
    # Whether requests may ask the provider to store the completion (`store`, `metadata`).
    CHAT_ALLOW_STORE: bool = False
    # Whether the chat page's conversations are kept on this site (prompts, answers, images, tool
    # results); sites that must not store prompts turn it off.
    CHAT_SAVE_CONVERSATIONS: bool = True
    # Further top-level parameters let through to the upstream unvalidated (provider features the schema does not know).
    CHAT_EXTRA_PARAMETERS: Sequence[str] = ()
    # Responses API tool types allowed besides `function` (e.g. "web_search"): built-in tools cost money per call.
    CHAT_RESPONSES_TOOL_TYPES: Sequence[str] = ()
    # Request bodies over this many bytes are refused with 413 before they are parsed: room for the
    # default images at their largest, plus 256 KiB for everything else.
    CHAT_MAX_REQUEST_BYTES: int = 4 * 2 * 1024 * 1024 + 256 * 1024
    # While the upstream is silent a keepalive goes to the client this often (seconds; 0 = never).
    CHAT_KEEPALIVE_SECONDS: float = 15.0
    # Threads of the relay's database work (admission, usage rows) per process: at most this many
    # database connections, reused across requests (see `streaming.database`).
    CHAT_DATABASE_THREADS: int = 4

    # Per-user limits (0 = no limit); staff override them per user or group in the admin.
    CHAT_REQUESTS_PER_MINUTE: int = 20
    CHAT_CONCURRENT_STREAMS: int = 2
    CHAT_DAILY_TOKEN_BUDGET: int = 200_000
    CHAT_MONTHLY_TOKEN_BUDGET: int = 2_000_000
    # Money budgets per user, in CHAT_CURRENCY (0 = no limit), from the usage rows' costs.
    CHAT_DAILY_COST_BUDGET: float | str = 0
    CHAT_MONTHLY_COST_BUDGET: float | str = 0
    # The currency of prices, costs and money budgets (ISO 4217).
    CHAT_CURRENCY: str = "USD"

    # Personal API keys for `/v1`: reserved to users with the `streaming.use_api_keys` permission
    # when True (else every active user may have them), and at most this many live keys a user
    # (0: none may be created).
    CHAT_API_KEYS_REQUIRE_PERMISSION: bool = False
    CHAT_MAX_API_KEYS_PER_USER: int = 20

    # Who may read /metrics (Prometheus): "staff" (a staff user's session), "token" (a scraper sending
    # `Authorization: Bearer <CHAT_METRICS_TOKEN>`), or "off" (404).
    CHAT_METRICS: str = "staff"
    CHAT_METRICS_TOKEN: str = ""

    def __getattribute__(self, name: str) -> Any:
        if name.isupper() and hasattr(settings, name):
            return getattr(settings, name)
        return super().__getattribute__(name)

    # Defaults that follow from other settings.
    @property
    def CHAT_DEMO_MODE(self) -> bool:
        return not self.OPENAI_API_KEY

    @property
    def CHAT_DEFAULT_MODEL(self) -> str:
        return self.CHAT_DEMO_MODEL if self.CHAT_DEMO_MODE else "gpt-4o-mini"

    @property
    def CHAT_ALLOWED_MODELS(self) -> list[str]:
        return [self.CHAT_DEFAULT_MODEL]


app_settings = AppSettings()

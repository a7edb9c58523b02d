"""Settings for chatproxy, read once from the environment (or a `.env` file).

Every variable is documented in `.env.example`.
"""

import secrets
from pathlib import Path

import environ
from corsheaders.defaults import default_headers as cors_default_headers
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
if (BASE_DIR / ".env").exists():
    environ.Env.read_env(BASE_DIR / ".env")

DEBUG = env.bool("DEBUG", default=True)


def _development_secret_key() -> str:
    """A per-checkout random key, so a fresh clone runs without sharing a known key."""
    key_file = BASE_DIR / ".secret_key"
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(50))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off.")
    SECRET_KEY = _development_secret_key()

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "corsheaders",
    "streaming",
]

# Django's standard stack. Under ASGI each hook of these middleware costs a thread hop; the four
# from chatproxy.middleware run their hooks on the event loop instead (see that module). Security,
# CSRF and clickjacking stay Django's own classes: the deploy checks look for them by name.
MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "chatproxy.middleware.SessionMiddleware",
    "chatproxy.middleware.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "chatproxy.middleware.AuthenticationMiddleware",
    "chatproxy.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "chatproxy.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

ASGI_APPLICATION = "chatproxy.asgi.application"
WSGI_APPLICATION = "chatproxy.wsgi.application"

DATABASES = {
    "default": env.db("DATABASE_URL", default=f"sqlite:///{BASE_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # WAL lets readers and the usage-row writer work at once; NORMAL syncs at checkpoints, not on
    # every commit (a power cut may lose the last rows, never corrupt the file).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        init_command="PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        transaction_mode="IMMEDIATE",
        timeout=20,
    )
    # Connections stay open: the relay's database threads (streaming.database) outlive requests,
    # and closing the last connection to a WAL database checkpoints it, several times the cost of
    # the request's own queries.
    DATABASES["default"].setdefault("CONN_MAX_AGE", None)
elif DATABASES["default"]["ENGINE"].endswith("postgresql") and env.bool("DATABASE_POOL", default=True):
    # Requests hand their connection back before streaming (see streaming.views); with a pool,
    # taking one again for the usage row costs microseconds instead of a new connection.
    DATABASES["default"].setdefault("OPTIONS", {})["pool"] = {
        "min_size": 2,
        "max_size": env.int("DATABASE_POOL_MAX_SIZE", default=10),
        "timeout": 10,
    }

# Counters for per-user limits. Local memory is per process; use Redis (redis://...) when the site
# runs in more than one process, so the limits hold across all of them.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
if CACHES["default"]["BACKEND"] == "django.core.cache.backends.redis.RedisCache":
    # The same backend with one connection pool per process instead of one per request (see the module).
    CACHES["default"]["BACKEND"] = "chatproxy.redis_cache.ProcessRedisCache"

# Where sessions live: "db", "cache" (fastest; sessions are lost if Redis is flushed), or "cached_db"
# (reads from the cache, writes through to the database). The default is "cached_db" when the cache
# is shared by the server processes (Redis), and "db" with a process's own memory, where a session
# ended in one process would live on in the others' copies.
_SHARED_CACHE = not CACHES["default"]["BACKEND"].endswith(("LocMemCache", "DummyCache"))
SESSION_ENGINE = {
    "db": "django.contrib.sessions.backends.db",
    "cache": "django.contrib.sessions.backends.cache",
    "cached_db": "django.contrib.sessions.backends.cached_db",
}[env.str("SESSION_STORE", default="cached_db" if _SHARED_CACHE else "db")]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "streaming:chat"
LOGOUT_REDIRECT_URL = "login"

# HTTPS in production (see deploy/production.env.example): behind a TLS-terminating proxy that sets
# X-Forwarded-Proto, with secure cookies and HSTS.
if env.bool("BEHIND_HTTPS_PROXY", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env.bool("SECURE_COOKIES", default=False)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Chat API bodies larger than this are refused with 413 before they are parsed; other forms of the
# site get the same cap. The default fits the default images (CHAT_MAX_IMAGES of CHAT_MAX_IMAGE_URL_BYTES)
# plus 256 KiB for the rest.
CHAT_MAX_REQUEST_BYTES = DATA_UPLOAD_MAX_MEMORY_SIZE = env.int(
    "CHAT_MAX_REQUEST_BYTES", default=4 * 2 * 1024 * 1024 + 256 * 1024
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"message": {"format": "%(message)s"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler"},
        "request_lines": {"class": "logging.StreamHandler", "formatter": "message"},
    },
    "loggers": {
        "streaming": {"handlers": ["console"], "level": "INFO", "propagate": False},
        # One JSON line per chat request: user id, model, status, tokens, timings. No prompt, no key.
        "streaming.requests": {"handlers": ["request_lines"], "level": "INFO", "propagate": False},
        # The SDK and its HTTP client log request details at DEBUG; keep them quiet.
        "openai": {"level": "WARNING"},
        "httpx2": {"level": "WARNING"},
        "httpcore2": {"level": "WARNING"},
    },
}

# --- The upstream: any OpenAI-compatible server -------------------------------------------------

OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="https://api.openai.com/v1")
OPENAI_CONNECT_TIMEOUT = env.float("OPENAI_CONNECT_TIMEOUT", default=5.0)
# Seconds from the request to the first token of the answer (reasoning models think first).
OPENAI_FIRST_TOKEN_TIMEOUT = env.float("OPENAI_FIRST_TOKEN_TIMEOUT", default=120.0)
# The longest silence tolerated between two chunks once the answer has begun.
OPENAI_IDLE_TIMEOUT = env.float("OPENAI_IDLE_TIMEOUT", default=60.0)
OPENAI_MAX_RETRIES = env.int("OPENAI_MAX_RETRIES", default=2)
# Connections to the upstream per process; requests beyond it wait up to OPENAI_CONNECT_TIMEOUT, then get 503.
OPENAI_MAX_CONNECTIONS = env.int("OPENAI_MAX_CONNECTIONS", default=100)
# The request field that carries a per-user pseudonym upstream: safety_identifier, user, or empty for none.
OPENAI_USER_FIELD = env.str("OPENAI_USER_FIELD", default="safety_identifier")

# With no key the built-in demo model answers, through the same SDK and relay code.
CHAT_DEMO_MODE = not OPENAI_API_KEY
CHAT_DEMO_MODEL = "chatproxy-demo"
# Seconds between the demo model's tokens.
CHAT_DEMO_TOKEN_DELAY = env.float("CHAT_DEMO_TOKEN_DELAY", default=0.04)

if CHAT_DEMO_MODE:
    CHAT_DEFAULT_MODEL = CHAT_DEMO_MODEL
    CHAT_ALLOWED_MODELS = [CHAT_DEMO_MODEL]
else:
    CHAT_DEFAULT_MODEL = env.str("CHAT_DEFAULT_MODEL", default="gpt-4o-mini")
    CHAT_ALLOWED_MODELS = env.list("CHAT_ALLOWED_MODELS", default=[CHAT_DEFAULT_MODEL])
    if CHAT_DEFAULT_MODEL not in CHAT_ALLOWED_MODELS:
        raise ImproperlyConfigured("CHAT_DEFAULT_MODEL must be one of CHAT_ALLOWED_MODELS.")

# Requests asking for more completion tokens are clamped to this; requests asking for none get it.
CHAT_MAX_TOKENS = env.int("CHAT_MAX_TOKENS", default=1024)
CHAT_MAX_MESSAGES = env.int("CHAT_MAX_MESSAGES", default=100)
# Characters of text across a request: message contents, text and refusal parts, tool-call arguments.
CHAT_MAX_INPUT_CHARS = env.int("CHAT_MAX_INPUT_CHARS", default=100_000)
# Images per request, and the longest image URL (a data URL's bytes); the default body cap fits them.
CHAT_MAX_IMAGES = env.int("CHAT_MAX_IMAGES", default=4)
CHAT_MAX_IMAGE_URL_BYTES = env.int("CHAT_MAX_IMAGE_URL_BYTES", default=2 * 1024 * 1024)
# Function tools per request, and the JSON size of all their definitions together.
CHAT_MAX_TOOLS = env.int("CHAT_MAX_TOOLS", default=128)
CHAT_MAX_TOOLS_BYTES = env.int("CHAT_MAX_TOOLS_BYTES", default=64 * 1024)
# Choices per request (`n`): each is a whole answer, paid for.
CHAT_MAX_CHOICES = env.int("CHAT_MAX_CHOICES", default=1)
# Whether requests may ask the provider to store the completion (`store`, `metadata`): a data-retention decision.
CHAT_ALLOW_STORE = env.bool("CHAT_ALLOW_STORE", default=False)
# Whether the chat page's conversations are kept on this site (prompts, answers, images, tool results).
CHAT_SAVE_CONVERSATIONS = env.bool("CHAT_SAVE_CONVERSATIONS", default=True)
# Further top-level parameters let through to the upstream unvalidated, comma-separated (default none).
CHAT_EXTRA_PARAMETERS = env.list("CHAT_EXTRA_PARAMETERS", default=[])
# Responses API tool types allowed besides "function", comma-separated (built-in tools are billed per call).
CHAT_RESPONSES_TOOL_TYPES = env.list("CHAT_RESPONSES_TOOL_TYPES", default=[])
# While the upstream is silent, a keepalive goes to the client this often (seconds; 0 = never), so
# proxies with idle timeouts do not cut the stream: a blank line in NDJSON, ": ping" in SSE.
CHAT_KEEPALIVE_SECONDS = env.float("CHAT_KEEPALIVE_SECONDS", default=15.0)
# Threads per process for the relay's database work (admission, usage rows): at most this many connections.
CHAT_DATABASE_THREADS = env.int("CHAT_DATABASE_THREADS", default=4)

# Per-user limits (0 = no limit); staff override them per user or group in the admin.
CHAT_REQUESTS_PER_MINUTE = env.int("CHAT_REQUESTS_PER_MINUTE", default=20)
CHAT_CONCURRENT_STREAMS = env.int("CHAT_CONCURRENT_STREAMS", default=2)
CHAT_DAILY_TOKEN_BUDGET = env.int("CHAT_DAILY_TOKEN_BUDGET", default=200_000)
CHAT_MONTHLY_TOKEN_BUDGET = env.int("CHAT_MONTHLY_TOKEN_BUDGET", default=2_000_000)
# Money budgets per user in CHAT_CURRENCY (0 = no limit), counted from the usage rows' costs.
CHAT_DAILY_COST_BUDGET = env.str("CHAT_DAILY_COST_BUDGET", default="0")
CHAT_MONTHLY_COST_BUDGET = env.str("CHAT_MONTHLY_COST_BUDGET", default="0")
CHAT_CURRENCY = env.str("CHAT_CURRENCY", default="USD")

# Personal API keys for /v1: only holders of the streaming.use_api_keys permission when true.
CHAT_API_KEYS_REQUIRE_PERMISSION = env.bool("CHAT_API_KEYS_REQUIRE_PERMISSION", default=False)
CHAT_MAX_API_KEYS_PER_USER = env.int("CHAT_MAX_API_KEYS_PER_USER", default=20)

# Who may read /metrics: staff (a staff session), token (Authorization: Bearer CHAT_METRICS_TOKEN), or off.
CHAT_METRICS = env.str("CHAT_METRICS", default="staff")
CHAT_METRICS_TOKEN = env.str("CHAT_METRICS_TOKEN", default="")
if CHAT_METRICS == "token" and not CHAT_METRICS_TOKEN:
    raise ImproperlyConfigured("CHAT_METRICS=token needs CHAT_METRICS_TOKEN.")

# Browser pages on these origins (scheme://host[:port]) may call /v1 with a key (django-cors-headers);
# none by default, so no CORS headers are sent. The page's own API is same-origin only.
CORS_ALLOWED_ORIGINS = env.list("CHAT_API_CORS_ORIGINS", default=[])
CORS_URLS_REGEX = r"^/v1/.*$"
# The openai SDKs send these with every request; a browser asks before it lets them through.
CORS_ALLOW_HEADERS = (
    *cors_default_headers,
    "openai-organization",
    "openai-project",
    "x-stainless-arch",
    "x-stainless-helper-method",
    "x-stainless-lang",
    "x-stainless-os",
    "x-stainless-package-version",
    "x-stainless-retry-count",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-timeout",
)
CORS_EXPOSE_HEADERS = ["x-request-id", "retry-after", "server-timing"]

"""One env-driven settings module.

With no environment at all the project runs on one machine: SQLite under var/ and an embedded Redis on a unix
socket (started by `manage.py up` or the test session). DATABASE_URL and REDIS_URL select real services.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from urllib.parse import urlparse

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from controlplane.private import secure_var
from jobs.common.atomic import write_atomic

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name}={raw!r} is not a boolean: use 1/0, true/false, yes/no or on/off.")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not an integer.") from None


def _env_count(name: str, default: int) -> int:
    value = _env_int(name, default)
    if value < 1:
        raise ImproperlyConfigured(f"{name}={value} must be at least 1.")
    return value


VAR_DIR = Path(os.environ.get("CP_VAR_DIR") or BASE_DIR / "var").resolve()
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
RUNS_DIR = Path(os.environ.get("CP_RUNS_DIR") or VAR_DIR / "runs").resolve()


def _secret_key() -> str:
    key = os.environ.get("CP_SECRET_KEY", "")
    if key:
        return key
    # A per-install key kept beside the embedded database: nothing secret ships in the repository.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        write_atomic(path, secrets.token_urlsafe(50), mode=0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()


def _audit_key() -> str:
    """The audit chain's HMAC key: never in the database, so rows rewritten there cannot be re-linked."""
    key = os.environ.get("CP_AUDIT_KEY", "")
    if key:
        return key
    path = VAR_DIR / "audit_key"
    if not path.exists():
        write_atomic(path, secrets.token_urlsafe(48), mode=0o600)
    return path.read_text().strip()


AUDIT_KEY = _audit_key()
# Where the chain's newest link is anchored outside the database (append-only lines of id and hash); a path on
# another machine's mount or a log shipper's input keeps it out of reach of the database host too.
AUDIT_ANCHOR = Path(os.environ.get("CP_AUDIT_ANCHOR") or VAR_DIR / "audit_anchor.log")
AUDIT_VERIFY_EVERY_S = _env_int("CP_AUDIT_VERIFY_EVERY_S", 3600)
# Who hears of a broken audit chain (and other server errors) by mail: "Name <a@b>, ..." (Django's ADMINS).
ADMINS = [
    (a.split("<")[0].strip() or a.strip(), a.split("<")[-1].rstrip(">").strip())
    for a in os.environ.get("CP_ADMINS", "").split(",")
    if a.strip()
]
EMAIL_BACKEND = os.environ.get("CP_EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEBUG = _env_bool("CP_DEBUG", False)
ALLOWED_HOSTS = [h.strip() for h in os.environ.get("CP_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",") if h.strip()]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CP_CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "ninja",  # the REST API's docs page, served from its own static files
    "axes",  # login throttling and lockout; before runs, whose failed-login audit reads its count
    "controlplane",
    "runs",
    "workers",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "controlplane.middleware.LoginRequiredEverywhere",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # a locked-out login gets axes' 429 page
]

# Login throttling (django-axes): after CP_LOGIN_FAILURE_LIMIT failed logins of one username from one address, that
# pair is locked out for CP_LOGIN_COOLOFF_MIN minutes (a 429 page), and an admin can unlock it early in Django admin
# (Axes -> access attempts) or with `manage.py axes_reset`. The REST API takes random 256-bit bearer tokens, which
# are not guessable, and no passwords.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = _env_count("CP_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = _env_count("CP_LOGIN_COOLOFF_MIN", 15) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_ENABLE_ACCESS_FAILURE_LOG = False
# Behind a reverse proxy, the client's address comes from the header it sets (e.g. HTTP_X_FORWARDED_FOR); unset,
# REMOTE_ADDR.
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    [os.environ["CP_CLIENT_IP_HEADER"]] if os.environ.get("CP_CLIENT_IP_HEADER") else ["REMOTE_ADDR"]
)

ROOT_URLCONF = "controlplane.urls"
ASGI_APPLICATION = "controlplane.asgi.application"

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
                "runs.services.roles.role_context",
            ],
        },
    },
]


def _database() -> dict:
    url = os.environ.get("DATABASE_URL", "")
    if not url:
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(VAR_DIR / "controlplane.sqlite3"),
            # IMMEDIATE makes every atomic block take the write lock up front, so the audit chain's
            # read-then-append cannot interleave between two writers.
            "OPTIONS": {"transaction_mode": "IMMEDIATE", "timeout": 20},
        }
    scheme = urlparse(url).scheme
    if scheme not in {"postgres", "postgresql", "pgsql", "sqlite"}:
        raise ImproperlyConfigured(
            f"DATABASE_URL has scheme {scheme or '(none)'!r}; use postgres://USER@HOST:PORT/NAME "
            "or sqlite:////absolute/path.sqlite3."
        )
    try:
        # No persistent connections (CONN_MAX_AGE 0): under ASGI each request's sync code runs in a thread of its
        # own, so every request left a connection open, and the walk's few thousand requests filled PostgreSQL's
        # max_connections (Django's docs: disable them under ASGI). The ingest threads, few and long-lived, keep
        # theirs (runs.metrics.ingest).
        config = dj_database_url.parse(url, conn_max_age=0)
    except Exception as exc:  # dj-database-url raises several types for malformed URLs
        raise ImproperlyConfigured(  # noqa: B904 - the message carries the cause
            f"DATABASE_URL could not be parsed ({exc}); expected postgres://USER@HOST:PORT/NAME."
        )
    if config["ENGINE"].endswith("postgresql") and not config.get("NAME"):
        raise ImproperlyConfigured(
            "DATABASE_URL names no database: add it after the host, e.g. postgres://u@h:5432/cp."
        )
    if config["ENGINE"].endswith("sqlite3"):
        config["OPTIONS"] = {"transaction_mode": "IMMEDIATE", "timeout": 20}
    return dict(config)


DATABASES = {"default": _database()}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # A file, not memory, so the test suite's web server and Celery worker processes share its test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-controlplane.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def _redis() -> tuple[bool, str, str, dict]:
    """(embedded, celery broker URL, plain redis URL for clients, channels-redis host spec)."""
    url = os.environ.get("REDIS_URL", "")
    if not url:
        sock = str(VAR_DIR / "redis.sock")
        return True, f"redis+socket://{sock}", f"unix://{sock}", {"address": f"unix://{sock}"}
    parsed = urlparse(url)
    if parsed.scheme not in {"redis", "rediss", "unix"}:
        raise ImproperlyConfigured(
            f"REDIS_URL has scheme {parsed.scheme or '(none)'!r}; use redis://HOST:PORT/DB or unix:///path/redis.sock."
        )
    if parsed.scheme == "unix":
        if not parsed.path:
            raise ImproperlyConfigured("REDIS_URL=unix:// needs a socket path, e.g. unix:///run/redis.sock.")
        return False, f"redis+socket://{parsed.path}", url, {"address": url}
    try:
        parsed.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError:
        raise ImproperlyConfigured(f"REDIS_URL {url!r} has a malformed port; expected redis://HOST:6379/0.") from None
    if not parsed.hostname:
        raise ImproperlyConfigured(f"REDIS_URL {url!r} names no host; expected redis://HOST:6379/0.")
    return False, url, url, {"address": url}


EMBEDDED_REDIS, CELERY_BROKER_URL, REDIS_CLIENT_URL, _CHANNELS_HOST = _redis()
EMBEDDED_REDIS_SOCKET = str(VAR_DIR / "redis.sock")

# After a Redis restart every pooled connection is dead, and redis-py's asyncio connections do not retry by
# default: the first websocket handshake after the outage failed with a 500. A command that meets a dead
# connection reconnects and is sent again, and a connection idle for 15 s is checked with a PING before use.
CHANNELS_REDIS_CONNECTION = {
    "socket_timeout": 30,
    "socket_connect_timeout": 5,
    "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
    "retry_on_error": [RedisConnectionError],
    "health_check_interval": 15,
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # redis-py 8 reads with a 5 s socket timeout by default, exactly channels-redis's 5 s BZPOPMIN: every idle
        # websocket would die of a read timeout. Give blocking reads room.
        "CONFIG": {
            "hosts": [{**_CHANNELS_HOST, **CHANNELS_REDIS_CONNECTION}],
            "capacity": 2000,
            "expiry": 30,
        },
    }
}

CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CP_CELERY_QUEUE", "celery")
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Keep reconnecting however long Redis is away (Celery's default gives up after 100 tries and the worker exits).
CELERY_BROKER_CONNECTION_MAX_RETRIES = None
CELERY_TASK_ALWAYS_EAGER = _env_bool("CP_CELERY_EAGER", False)
# Local CPU launches fork a DeepSpeed launcher that a worker started and imported ahead (workers.backends.warm).
WARM_LAUNCHER = _env_bool("CP_WARM_LAUNCHER", True)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator", "OPTIONS": {"min_length": 8}},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
CSRF_COOKIE_SAMESITE = "Lax"
SESSION_COOKIE_SECURE = _env_bool("CP_SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
X_FRAME_OPTIONS = "DENY"
SECURE_CONTENT_TYPE_NOSNIFF = True

# The production profile (CP_PROFILE=production; README "Production profile"): served over HTTPS only, cookies Secure, HSTS,
# and a content security policy (django-csp) that runs only the control plane's own scripts. `manage.py check
# --deploy` is clean under it (tests/controlplane/test_production_profile.py). The development profile (the default)
# keeps `make up` on plain http://127.0.0.1:8000.
PROFILE = os.environ.get("CP_PROFILE", "development").strip().lower()
if PROFILE not in ("development", "production"):
    raise ImproperlyConfigured(f"CP_PROFILE={PROFILE!r}: use development (the default) or production.")
if PROFILE == "production":
    from csp.constants import NONCE, NONE, SELF

    if DEBUG:
        raise ImproperlyConfigured("CP_DEBUG=1 is refused under CP_PROFILE=production.")
    SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = True
    SECURE_SSL_REDIRECT = _env_bool("CP_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = _env_int("CP_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = _env_bool("CP_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = _env_bool("CP_HSTS_PRELOAD", True)
    SECURE_REFERRER_POLICY = "same-origin"
    SECURE_CROSS_ORIGIN_OPENER_POLICY = "same-origin"
    if _env_bool("CP_BEHIND_PROXY", False):  # TLS ends at a reverse proxy that sets X-Forwarded-Proto
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SESSION_COOKIE_AGE = _env_int("CP_SESSION_AGE_S", 12 * 3600)
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "csp.middleware.CSPMiddleware"
    )
    INSTALLED_APPS.append("csp")
    CONTENT_SECURITY_POLICY = {
        "DIRECTIVES": {
            "default-src": [SELF],
            # Our own files, and the two inline page starters with the request's nonce.
            "script-src": [SELF, NONCE],
            # plotly.js sets styles at run time; no script runs from a style.
            "style-src": [SELF, "'unsafe-inline'"],
            "img-src": [SELF, "data:", "blob:"],
            "font-src": [SELF, "data:"],
            "connect-src": [SELF],  # the API and the websockets of this origin
            "worker-src": [SELF, "blob:"],
            "object-src": [NONE],
            "base-uri": [SELF],
            "form-action": [SELF],
            "frame-ancestors": [NONE],
        }
    }

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"


def _plotly_bundle_dir() -> str:
    # plotly.js is served from the plotly package's own bundle (pinned in requirements.txt), never a CDN.
    import plotly

    return str(Path(plotly.__file__).parent / "package_data")


STATICFILES_DIRS = [BASE_DIR / "static", ("vendor/plotly", _plotly_bundle_dir())]
STATIC_ROOT = VAR_DIR / "staticfiles"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
# `collectstatic` (run by `manage.py up`) writes each file under a content-hashed name with .gz and .br beside it;
# whitenoise serves those compressed with a one-year immutable cache. Until it has run (a test session, a fresh
# clone) pages fall back to the plain names, served uncompressed from the source folders.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "controlplane.staticfiles.StaticStorage"},
}

# The MFU the plan assumes for time-to-budget; unset, it is calibrated from finished runs (runs.services.calibration).
CP_PLAN_MFU = float(os.environ["CP_PLAN_MFU"]) if os.environ.get("CP_PLAN_MFU") else None
CP_BASE_URL = os.environ.get("CP_BASE_URL", "http://127.0.0.1:8000")
CP_WORKER_CONCURRENCY = _env_int("CP_WORKER_CONCURRENCY", 2)
CP_WEB_WORKERS = _env_count("CP_WEB_WORKERS", 1)  # web server processes (controlplane.processes)
CP_INGEST_THREADS = _env_count("CP_INGEST_THREADS", 1)  # ingest transactions at once per web process
# Run tokens (runs.services.tokens): how long a process trusts a token it checked (the bound on revocation), how long
# a job token outlives its run (the reporter's final flush), and an operator token's lifetime unless given.
TOKEN_CACHE_TTL_S = _env_int("CP_TOKEN_CACHE_TTL_S", 15)
TOKEN_GRACE_S = _env_int("CP_TOKEN_GRACE_S", 60)
OPERATOR_TOKEN_TTL_S = _env_int("CP_OPERATOR_TOKEN_TTL_S", 30 * 24 * 3600)


# Jobs on the local backend run as their own unprivileged user: run N (and its quantize, benchmark and server jobs)
# as uid START+N of CP_JOB_UIDS ("START-END", group START; END itself runs the count and data-prep jobs), with an
# allow-listed environment and a run directory only it can read (workers.backends.jobuser).
# Off ("" or "off"): jobs run as the control plane's own account (a single-user install); `manage.py up` as root turns
# it on. CP_JOB_PYTHON: the interpreter jobs run with when the control plane's is not reachable by those users.
def _job_uids() -> tuple[int, int] | None:
    raw = os.environ.get("CP_JOB_UIDS", "").strip().lower()
    if raw in ("", "off", "0", "no", "false"):
        return None
    try:
        start, end = (int(x) for x in raw.split("-"))
    except ValueError:
        raise ImproperlyConfigured(
            f"CP_JOB_UIDS={raw!r}: give a range START-END, e.g. 200000-299999, or off."
        ) from None
    if not 1000 <= start < end < 2**31 - 1:
        raise ImproperlyConfigured(f"CP_JOB_UIDS={raw!r}: need 1000 <= START < END, e.g. 200000-299999.")
    return start, end


JOB_UIDS = _job_uids()
# var/ 0700 (0710 for the jobs' group when jobs run as their own users), secrets and the database 0600: created so,
# and corrected on every start of an install made before.
secure_var(VAR_DIR, runs_dir=RUNS_DIR, job_gid=JOB_UIDS[0] if JOB_UIDS else None)
JOB_PYTHON = os.environ.get("CP_JOB_PYTHON", "")  # empty: the worker's own interpreter


def _script_roots() -> list[Path]:
    """Folders an own-script run's script may come from (CP_SCRIPT_ROOTS, colon-separated absolute paths)."""
    raw = os.environ.get("CP_SCRIPT_ROOTS", "")
    if not raw.strip():
        return [(VAR_DIR / "scripts").resolve()]
    roots = [Path(p).expanduser() for p in raw.split(":") if p.strip()]
    relative = [str(p) for p in roots if not p.is_absolute()]
    if relative:
        raise ImproperlyConfigured(f"CP_SCRIPT_ROOTS holds relative paths ({', '.join(relative)}); use absolute ones.")
    return [p.resolve() for p in roots]


SCRIPT_ROOTS = _script_roots()

# Data preparation: where prep and count jobs keep their folders, which local folders a data source may read (a
# registered path must lie inside one), and which fsspec URL schemes (s3, gs, ...) a source may name.
PREP_DIR = Path(os.environ.get("CP_PREP_DIR") or VAR_DIR / "prep").resolve()


def _data_roots() -> list[Path]:
    raw = os.environ.get("CP_DATA_ROOTS", "")
    if not raw.strip():
        return [(VAR_DIR / "data").resolve(), BASE_DIR / "jobs" / "assets" / "corpus"]
    roots = [Path(p).expanduser() for p in raw.split(":") if p.strip()]
    relative = [str(p) for p in roots if not p.is_absolute()]
    if relative:
        raise ImproperlyConfigured(f"CP_DATA_ROOTS holds relative paths ({', '.join(relative)}); use absolute ones.")
    return [p.resolve() for p in roots]


DATA_ROOTS = _data_roots()
DATA_REMOTE_PROTOCOLS = [
    p.strip().lower() for p in os.environ.get("CP_DATA_REMOTE_PROTOCOLS", "").split(",") if p.strip()
]

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("CP_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}

"""Typed settings, read once from ``SIP_HUB_*`` environment variables and passed in."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from .logs import LogFormat, LogLevel

DEFAULT_DATA_DIR = Path("var")
# Listen addresses that name every interface, and the address that reaches them locally.
_LOOPBACK = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}


def _server_url(v: str, schemes: tuple[str, ...], *, address_only: bool = False) -> bool:
    """``v`` names a host by one of ``schemes``, with no port or one from 1 to 65535 (any
    other failed later: kombu's sanitizer and connection, every link the hub emits) and,
    ``address_only``, no query or fragment: an address that paths are added to."""
    parts = urlsplit(v)
    try:
        port = parts.port
    except ValueError:  # (not a number, or beyond 65535)
        return False
    return parts.scheme in schemes and bool(parts.hostname) and port != 0 and not (
        address_only and (parts.query or parts.fragment))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SIP_HUB_", extra="ignore")

    env: Literal["dev", "test", "production"] = "dev"
    # Empty means the embedded default: SQLite under data_dir.
    database_url: str = ""
    broker_url: str = "memory://"
    data_dir: Path = DEFAULT_DATA_DIR
    mappings_dir: Path = Path("mappings")
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=1, le=65535)
    workers: int = Field(default=1, ge=1)
    # Threads per worker process for blocking work (writes; reads on PostgreSQL).
    threads: int = Field(default=8, ge=1, le=200)
    # One log line per HTTP request. Off by default: every access to personal data is an
    # AuditEvent already, and the line costs a tenth of a read's time.
    access_log: bool = False
    # The hub's log lines on stderr: text for people, json (a JSON object a line) for a log
    # pipeline; see sip_hub.logs.
    log_level: LogLevel = "info"
    log_format: LogFormat = "text"
    # Public base URL used in Location headers, Bundle links and fullUrls; empty: the listen
    # address (see public_base).
    base_url: str = ""
    auto_migrate: bool = True
    max_body_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    # Entries of a transaction or batch Bundle at most: within the body's bound, 60,000
    # small searches took a worker a minute (a demo SIP is a dozen, a set-up Bundle fifty).
    max_bundle_entries: int = Field(default=1000, ge=1)
    default_page_size: int = Field(default=50, ge=1, le=1000)
    max_page_size: int = Field(default=1000, ge=1)
    db_pool_size: int = Field(default=10, ge=1)
    # Token signing keys: a JSON list of {"kid": ..., "pem": <PKCS8 EC P-256 private key>};
    # the first signs, all verify (rotation: add the new key first, drop the old one once
    # its tokens have expired). Or a file with the same JSON. Empty in dev: a key is made
    # under data_dir on first start.
    jwt_keys: str = ""
    jwt_keys_file: Path | None = None
    token_lifetime_seconds: int = Field(default=300, ge=30, le=3600)
    # How long a process may go on accepting the tokens of a client disabled meanwhile
    # (`sip-hub client disable`): it reads the disabled clients at most this often.
    client_state_seconds: float = Field(default=5.0, gt=0, le=300)
    # How long a web console session (/admin) lasts from signing in.
    console_session_minutes: int = Field(default=30, ge=1, le=720)
    issuer: str = "sip_hub"
    # A SIP without any write for this many days is inactive (a deadline Task asks the
    # coordinator to follow it up or close it); deadlines are scanned in the API process every
    # this many minutes (0: never; never in the test environment).
    # (bounded: a period of days beyond datetime's range failed every deadline round)
    sip_inactive_days: int = Field(default=90, ge=1, le=36_500)
    sip_deadline_scan_minutes: int = Field(default=5, ge=0, le=10_080)
    # The bearer token the Prometheus scraper sends (its scrape config's ``authorization``)
    # for /metrics; any other caller gets a 401. Unset: /metrics answers anyone who reaches
    # the API's port (set it wherever that is more than the monitoring network).
    metrics_token: SecretStr | None = None

    # A URL the hub cannot use is refused at start with the setting's name, not met as a
    # traceback from SQLAlchemy or kombu, or as wrong links in every response.
    @field_validator("database_url")
    @classmethod
    def _database(cls, v: str) -> str:
        if not v:
            return v
        try:
            url = make_url(v)
            url.port  # noqa: B018 (a port that is not a number fails here)
        except (ArgumentError, ValueError):
            url = None
        if url is None or url.get_backend_name() not in ("sqlite", "postgresql"):
            raise ValueError("must be a sqlite:///... or postgresql://... URL")
        return v

    @field_validator("broker_url")
    @classmethod
    def _broker(cls, v: str) -> str:
        # (kombu takes brokers to fail over to as url1;url2: each must be usable)
        if not v.startswith("memory://") and not all(
                _server_url(url, ("amqp", "amqps", "pyamqp")) for url in v.split(";")):
            raise ValueError("must be memory:// or an amqp://user:password@host:port/vhost URL")
        return v

    @field_validator("base_url")
    @classmethod
    def _base(cls, v: str) -> str:
        if v and not _server_url(v, ("http", "https"), address_only=True):
            raise ValueError("must be the hub's absolute http(s) address, e.g. "
                             "https://sip.region.se")
        return v

    @field_validator("metrics_token")
    @classmethod
    def _metrics_token(cls, v: SecretStr | None) -> SecretStr | None:
        # Without the whitespace around it: a token from a file keeps the file's last line
        # break (a Kubernetes secret made --from-file, say), which Prometheus strips from its
        # credentials_file; kept, no scrape would match and the hub would not start.
        token = v.get_secret_value().strip() if v is not None else ""
        if not token:
            return None  # (SIP_HUB_METRICS_TOKEN= set empty: no token, as unset)
        if len(token) < 16 or not all(33 <= ord(c) <= 126 for c in token):
            raise ValueError("must be at least 16 printable ASCII characters without spaces "
                             "(a bearer token, e.g. from `openssl rand -hex 32`)")
        return SecretStr(token)

    @model_validator(mode="after")
    def _page_sizes(self) -> "Settings":
        if self.default_page_size > self.max_page_size:
            raise ValueError(f"SIP_HUB_DEFAULT_PAGE_SIZE ({self.default_page_size}) is more "
                             f"than SIP_HUB_MAX_PAGE_SIZE ({self.max_page_size})")
        return self

    @model_validator(mode="after")
    def _fill_database_url(self) -> "Settings":
        if not self.database_url:
            self.database_url = f"sqlite:///{(self.data_dir / 'sip_hub.sqlite3').as_posix()}"
        return self

    @property
    def public_base(self) -> str:
        """The hub's root URL, in every URL it emits (links, fullUrls, Location, the SMART
        configuration's endpoints): ``base_url``, else the listen address. Never a request's
        ``Host``: the caller chooses that, and would choose where other clients send their
        secrets. A wildcard address (0.0.0.0, ::) is no place to send a request to: the
        loopback address stands for it, which reaches the hub from its own machine only
        (``unreachable_base`` says so, and ``create_app`` logs it)."""
        if self.base_url:
            return self.base_url.rstrip("/")
        host = _LOOPBACK.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    @property
    def unreachable_base(self) -> bool:
        """No ``base_url`` and a wildcard listen address: the emitted URLs name the loopback
        address, which other machines cannot reach."""
        return not self.base_url and self.host in _LOOPBACK

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def production_problems(self) -> list[str]:
        """What makes these settings unfit for production (demo secrets, embedded stores)."""
        problems = []
        if not (self.jwt_keys or self.jwt_keys_file):
            problems.append("SIP_HUB_JWT_KEYS or SIP_HUB_JWT_KEYS_FILE must hold the token "
                            "signing keys")
        if "demo" in self.jwt_keys.lower():
            problems.append("SIP_HUB_JWT_KEYS holds a demo key")
        problems += self.production_database_problems()
        if self.broker_url.startswith("memory://"):
            problems.append("SIP_HUB_BROKER_URL must point at RabbitMQ, not the in-process bus")
        elif _demo_password(self.broker_url):
            problems.append("SIP_HUB_BROKER_URL uses a demo password")
        elif any(_default_broker_login(url) for url in self.broker_url.split(";")):
            problems.append("SIP_HUB_BROKER_URL logs in with RabbitMQ's default password guest "
                            "(a URL without a password is given it): name the hub's broker "
                            "user and its password, amqp://user:password@host/vhost")
        return problems

    def production_database_problems(self) -> list[str]:
        """What makes the database setting unfit for production: all that ``sip-hub migrate``
        uses, which refuses it as the API does (it created the schema in a database the API
        then refused to start on)."""
        problems = []
        if _demo_password(self.database_url):
            problems.append("SIP_HUB_DATABASE_URL uses a demo password")
        if self.is_sqlite:
            problems.append("SIP_HUB_DATABASE_URL must point at PostgreSQL, not SQLite")
        return problems


def _demo_password(url: str) -> bool:
    """Whether ``url`` holds a password of the demos and examples."""
    return any(w in url.lower() for w in ("change-me", "guest:guest", "demo", "secret@",
                                          "password@"))


def _default_broker_login(url: str) -> bool:
    """Whether kombu logs in to the broker ``url`` with RabbitMQ's default password: py-amqp
    fills in ``guest`` for a user or password the URL leaves out, so ``amqp://mq//`` and
    ``amqp://hub@mq//`` log in as the demo ``guest``/``guest`` (or try ``guest`` as the hub
    user's password), which the text check for ``guest:guest`` let through."""
    return unquote(urlsplit(url).password or "") in ("", "guest")

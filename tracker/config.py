"""skvoz.toml: load, validate, override from SKVOZ_* environment variables, write a starter file.

Environment overrides: a top-level key ``data_dir`` is ``SKVOZ_DATA_DIR``; a key in a section
(``[clickhouse] url``) is ``SKVOZ_CLICKHOUSE_URL``; the list of projects can be replaced whole
with ``SKVOZ_PROJECTS`` holding JSON. Values are parsed by the field's type (ints, booleans,
lists as JSON or comma-separated).
"""

from __future__ import annotations

import json
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from streams.rules import ProjectRules

DEFAULT_CONFIG = "skvoz.toml"
CURRENCIES = ("RUB", "KZT", "UZS", "KGS", "USD", "EUR", "BYN")


class ConfigError(Exception):
    """A config file or override that cannot be used; the message says why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Site(_Section):
    domain: str
    key: str = Field(min_length=8)
    enabled: bool = True

    @field_validator("domain")
    @classmethod
    def _domain(cls, v: str) -> str:
        v = v.strip().lower().rstrip(".")
        if not v or "/" in v or " " in v:
            raise ValueError(f"not a domain name: {v!r}")
        return v.removeprefix("www.")


class Project(_Section):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    name: str = ""
    currency: str = "RUB"
    timezone: str = "Europe/Moscow"
    visit_timeout_minutes: int = Field(default=30, ge=1, le=24 * 60)
    api_tokens: list[str] = Field(default_factory=list)
    conversion_goals: list[str] = Field(default_factory=list)
    store_contacts: bool = False  # keep raw phone/email beside their hashes
    sites: list[Site] = Field(default_factory=list)

    @field_validator("currency")
    @classmethod
    def _currency(cls, v: str) -> str:
        v = v.upper()
        if v not in CURRENCIES:
            raise ValueError(f"unsupported currency {v!r}; one of {', '.join(CURRENCIES)}")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r}") from None
        return v

    def rules(self) -> ProjectRules:
        return ProjectRules(
            project_id=self.id,
            domains=tuple(s.domain for s in self.sites),
            visit_timeout_ms=self.visit_timeout_minutes * 60_000,
            conversion_goals=frozenset(self.conversion_goals),
            currency=self.currency,
            store_contacts=self.store_contacts,
        )


class Server(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    # Origins other than the project's sites allowed to post (e.g. a staging host).
    allowed_origins: list[str] = Field(default_factory=list)
    trust_proxy: bool = False  # take the client address from X-Forwarded-For
    # Drop events from crawlers, scripts and headless browsers; off for browser tests.
    drop_bots: bool = True
    # Events per second per site over all collectors (`skvoz collector` with [redis] url);
    # 0 = no limit. Above it /collect answers 429 with Retry-After.
    rate_limit_per_site: int = Field(default=0, ge=0)


class ClickHouse(_Section):
    url: str = ""  # empty: embedded chdb under data_dir
    database: str = Field(default="skvoz", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


class Kafka(_Section):
    bootstrap: str = ""
    topic_prefix: str = "skvoz"
    partitions: int = Field(default=8, ge=1)
    replication: int = Field(default=1, ge=1)
    ack_timeout_ms: int = Field(default=5000, ge=100)


class Redis(_Section):
    url: str = ""
    # How long `skvoz collector` remembers a published event id, to skip replays.
    dedup_window_s: int = Field(default=3600, ge=1)


class Pipeline(_Section):
    batch_max_events: int = Field(default=20_000, ge=1)
    batch_max_ms: int = Field(default=200, ge=1)
    snapshot_every_s: int = Field(default=60, ge=1)


class Config(_Section):
    data_dir: str = "./skvoz-data"
    pii_key: str = ""  # secret for keyed hashes of phones and emails
    server: Server = Field(default_factory=Server)
    clickhouse: ClickHouse = Field(default_factory=ClickHouse)
    kafka: Kafka = Field(default_factory=Kafka)
    redis: Redis = Field(default_factory=Redis)
    pipeline: Pipeline = Field(default_factory=Pipeline)
    projects: list[Project] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> "Config":
        seen_ids, seen_keys, seen_tokens = set(), set(), set()
        for p in self.projects:
            if p.id in seen_ids:
                raise ValueError(f"duplicate project id {p.id!r}")
            seen_ids.add(p.id)
            for s in p.sites:
                if s.key in seen_keys:
                    raise ValueError(f"site key {s.key!r} is used twice")
                seen_keys.add(s.key)
            for t in p.api_tokens:
                if t in seen_tokens:
                    raise ValueError("an API token is used by two projects")
                seen_tokens.add(t)
        return self

    # -- look-ups used on hot paths are built once ------------------------------------------
    def model_post_init(self, _ctx: Any) -> None:
        self._by_key = {s.key: (p, s) for p in self.projects for s in p.sites}
        self._by_token = {t: p for p in self.projects for t in p.api_tokens}
        self._by_id = {p.id: p for p in self.projects}

    def site_by_key(self, key: str) -> tuple[Project, Site] | None:
        return self._by_key.get(key)

    def project_by_token(self, token: str) -> Project | None:
        return self._by_token.get(token)

    def project(self, project_id: str) -> Project | None:
        return self._by_id.get(project_id)

    def rules(self) -> dict[str, ProjectRules]:
        return {p.id: p.rules() for p in self.projects}

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    @property
    def embedded(self) -> bool:
        return not self.clickhouse.url


def _coerce(raw: str, annotation: Any) -> Any:
    """Parse an env string for a field; pydantic does the final validation."""
    text = raw.strip()
    if annotation is bool:
        return text.lower() in ("1", "true", "yes", "on")
    if getattr(annotation, "__origin__", None) is list:
        if text.startswith("["):
            return json.loads(text)
        return [x.strip() for x in text.split(",") if x.strip()]
    return text


def apply_env(data: dict, environ: dict[str, str] | None = None) -> dict:
    environ = os.environ if environ is None else environ
    data = dict(data)
    for name, info in Config.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, _Section):
            section = dict(data.get(name) or {})
            for key, sub in ann.model_fields.items():
                env = f"SKVOZ_{name}_{key}".upper()
                if env in environ:
                    section[key] = _coerce(environ[env], sub.annotation)
            data[name] = section
        else:
            env = f"SKVOZ_{name}".upper()
            if env in environ:
                value = environ[env]
                data[name] = json.loads(value) if name == "projects" else _coerce(value, ann)
    return data


def load(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the TOML file (if it exists), apply env overrides, validate."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("SKVOZ_CONFIG") or DEFAULT_CONFIG)
    data: dict = {}
    if path.exists():
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML: {e}") from None
    try:
        cfg = Config.model_validate(apply_env(data, environ))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{path}: {problems}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"SKVOZ_PROJECTS is not valid JSON: {e}") from None
    if not cfg.pii_key:
        raise ConfigError(f"{path}: pii_key is empty; run `skvoz init` or set SKVOZ_PII_KEY")
    return cfg


def starter_toml(domain: str = "example.com", project_id: str = "main") -> tuple[str, str, str]:
    """A starter config: (toml text, site key, api token)."""
    site_key = secrets.token_urlsafe(12)
    token = secrets.token_urlsafe(24)
    text = f"""# Skvoz configuration. Every key can be overridden by an environment variable:
# data_dir -> SKVOZ_DATA_DIR, [clickhouse] url -> SKVOZ_CLICKHOUSE_URL, and so on.
data_dir = "./skvoz-data"
# Secret for keyed hashes of phones and emails. Keep it; changing it splits identities.
pii_key = "{secrets.token_hex(32)}"

[server]
host = "127.0.0.1"
port = 8080

[clickhouse]
url = ""            # empty: embedded ClickHouse (chdb) in data_dir; or http://host:8123
database = "skvoz"

[[projects]]
id = "{project_id}"
name = "My project"
currency = "RUB"    # RUB, KZT, UZS, KGS, ...
timezone = "Europe/Moscow"
visit_timeout_minutes = 30
api_tokens = ["{token}"]
conversion_goals = ["signup"]
store_contacts = false

[[projects.sites]]
domain = "{domain}"
key = "{site_key}"
"""
    return text, site_key, token

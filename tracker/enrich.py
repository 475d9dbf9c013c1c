"""Turn raw JSON events from a site (or a trusted import) into validated ``streams.model.Event``.

Enrichment is a fixed list of named steps. A request-level step rejects every event of the
request (a disabled site, a bot user agent); an event-level step rejects one event. Every
rejected event gets a typed ``DropReason`` so nothing disappears silently: the caller reports
``{"index", "reason", "detail"}`` and counts it in /metrics.

Contacts: phones and emails are normalised and hashed here, at the edge, with the
installation's ``pii_key``; raw values ride in the Event only when the project opted in with
``store_contacts``. A form whose phone or email cannot be normalised is KEPT (the lead happened
and must be counted) with that contact dropped; the dropped part is reported as a *warning*
with reason ``invalid_contact``, not as a rejected event.

Hand-written checks rather than a pydantic model: the per-event path must stay in the
microseconds (the collector's throughput budget is ~20 µs per event).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from enum import Enum
from functools import lru_cache
from typing import Any, Callable

from streams.identity import keyed_hash, normalize_email, normalize_phone
from streams.model import EVENT_TYPES, Event
from tracker.config import Project, Site

# Types a browser may send; the trusted import may also carry calls and deals (backfills).
COLLECT_TYPES = frozenset(("pageview", "goal", "form"))
IMPORT_TYPES = frozenset(EVENT_TYPES)

WINDOW_PAST_MS = 72 * 3600 * 1000
WINDOW_FUTURE_MS = 5 * 60 * 1000
IMPORT_MIN_TS = 946_684_800_000  # 2000-01-01: anything older is a unit mistake (seconds, not ms)

MAX_URL = 4096
MAX_TITLE = 1024
MAX_NAME = 256
MAX_PROPS = 64
MAX_UA = 512

CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_BOT_RE = re.compile(
    r"bot\b|bot/|bot-|crawl|spider|slurp|scrap|archiver|facebookexternalhit|headlesschrome"
    r"|phantomjs|electron/.*headless|lighthouse|pagespeed|gtmetrix|pingdom|uptime|monitoring"
    r"|python-requests|python-urllib|python/|aiohttp|httpx|curl/|wget|go-http-client|java/"
    r"|okhttp|apache-httpclient|libwww|node-fetch|axios/|yandexmetrika|yandexwebmaster"
    r"|yandexturbo|mediapartners-google|feedfetcher|preview\)"
)


class DropReason(str, Enum):
    """Why an event (or, for ``invalid_contact``, a part of it) was dropped."""

    INVALID_EVENT = "invalid_event"  # not an object, missing/ill-typed field, too long
    UNKNOWN_TYPE = "unknown_type"
    TIMESTAMP_OUT_OF_WINDOW = "timestamp_out_of_window"
    BOT_USER_AGENT = "bot_user_agent"
    SITE_DISABLED = "site_disabled"
    UNKNOWN_SITE = "unknown_site"  # import: site key/domain not of the token's project
    INVALID_CLIENT_ID = "invalid_client_id"  # import: per-line client id
    INVALID_VALUE = "invalid_value"  # goal value not a finite non-negative number
    DUPLICATE_ID = "duplicate_id"  # same event id twice in one request
    INVALID_CONTACT = "invalid_contact"  # phone/email unusable: contact dropped, event kept


class Dropped(Exception):
    """Raised by a step to drop the event it is looking at."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: DropReason, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail


@dataclass(slots=True)
class Context:
    """What every event of one request (or one import line) shares."""

    project: Project
    site: Site
    client_id: str
    user_agent: str
    now_ms: int
    pii_key: bytes
    types: frozenset[str]
    ts_min: int
    ts_max: int
    drop_bots: bool = True


class Result:
    """What enrichment made of a request. Plain dicts, not Counters: built once per request."""

    __slots__ = ("events", "rejected", "warnings", "reasons", "contact_drops")

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.rejected: list[dict] = []
        self.warnings: list[dict] = []
        self.reasons: dict[str, int] = {}  # DropReason value -> count
        # (field, reason) -> count, for contact parts dropped from kept events
        self.contact_drops: dict[tuple[str, str], int] = {}

    def reject(self, index: int, reason: DropReason, detail: str = "") -> None:
        item = {"index": index, "reason": reason.value}
        if detail:
            item["detail"] = detail
        self.rejected.append(item)
        self.reasons[reason.value] = self.reasons.get(reason.value, 0) + 1


@lru_cache(maxsize=4096)
def is_bot(user_agent: str) -> bool:
    return bool(_BOT_RE.search(user_agent.lower()))


def canonical_uuid(value: Any) -> str | None:
    """Lower-case hyphenated UUID, or None. Fast path for the form browsers already send."""
    if not isinstance(value, str):
        return None
    if _UUID_RE.match(value):  # the crypto.randomUUID() form: no copy needed
        return value
    low = value.lower()
    try:
        return str(uuid.UUID(low))
    except ValueError:
        return None


def valid_client_id(value: Any) -> bool:
    return isinstance(value, str) and CLIENT_ID_RE.match(value) is not None


# -- request-level steps: each returns a reason that drops every event, or None -------------


def site_enabled(ctx: Context) -> tuple[DropReason, str] | None:
    if not ctx.site.enabled:
        return DropReason.SITE_DISABLED, f"site {ctx.site.domain} is disabled"
    return None


def bot_filter(ctx: Context) -> tuple[DropReason, str] | None:
    if ctx.drop_bots and ctx.user_agent and is_bot(ctx.user_agent):
        return DropReason.BOT_USER_AGENT, "user agent looks like a bot or a script"
    return None


REQUEST_STEPS: tuple[tuple[str, Callable[[Context], tuple[DropReason, str] | None]], ...] = (
    ("site_enabled", site_enabled),
    ("bot_filter", bot_filter),
)


# -- event-level steps: take the raw dict and the Event being built, raise Dropped -----------


def _str(raw: dict, key: str, limit: int, truncate: bool = False) -> str:
    v = raw.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise Dropped(DropReason.INVALID_EVENT, f"{key}: must be a string")
    if len(v) > limit:
        if truncate:  # a page with a huge URL or title is still a pageview worth counting
            return v[:limit]
        raise Dropped(DropReason.INVALID_EVENT, f"{key}: longer than {limit} characters")
    return v


def validate_shape(raw: Any, ev: Event, ctx: Context) -> None:
    if not isinstance(raw, dict):
        raise Dropped(DropReason.INVALID_EVENT, "event must be a JSON object")
    eid = canonical_uuid(raw.get("id"))
    if eid is None:
        raise Dropped(DropReason.INVALID_EVENT, "id: must be a UUID")
    ev.event_id = eid
    ts = raw.get("ts")
    if type(ts) is float and math.isfinite(ts):
        ts = int(ts)
    if type(ts) is not int:
        raise Dropped(DropReason.INVALID_EVENT, "ts: must be an integer epoch in milliseconds")
    ev.ts = ts
    typ = raw.get("type")
    if not isinstance(typ, str):
        raise Dropped(DropReason.INVALID_EVENT, "type: must be a string")
    ev.type = typ
    ev.url = _str(raw, "url", MAX_URL, truncate=True)
    ev.referrer = _str(raw, "referrer", MAX_URL, truncate=True)
    ev.title = _str(raw, "title", MAX_TITLE, truncate=True)
    ev.name = _str(raw, "name", MAX_NAME)
    props = raw.get("props")
    if props is not None:
        if not isinstance(props, dict):
            raise Dropped(DropReason.INVALID_EVENT, "props: must be an object")
        if len(props) > MAX_PROPS:
            raise Dropped(DropReason.INVALID_EVENT, f"props: more than {MAX_PROPS} keys")
        ev.props = props


def check_type(raw: dict, ev: Event, ctx: Context) -> None:
    if ev.type not in ctx.types:
        raise Dropped(DropReason.UNKNOWN_TYPE, f"type {ev.type[:32]!r} is not one of "
                      f"{', '.join(sorted(ctx.types))}")
    if ev.type == "pageview":
        if not ev.url.startswith(("http://", "https://")):
            raise Dropped(DropReason.INVALID_EVENT, "url: a pageview needs an http(s) URL")
    elif ev.type != "form" and not ev.name:
        raise Dropped(DropReason.INVALID_EVENT, f"name: a {ev.type} needs a name")


def check_timestamp(raw: dict, ev: Event, ctx: Context) -> None:
    if not ctx.ts_min <= ev.ts <= ctx.ts_max:
        raise Dropped(
            DropReason.TIMESTAMP_OUT_OF_WINDOW,
            f"ts {ev.ts} outside [{ctx.ts_min}, {ctx.ts_max}]",
        )


def conversion_value(raw: dict, ev: Event, ctx: Context) -> None:
    props = ev.props
    # a pageview's props.value is just a property: only conversions carry money
    if not props or "value" not in props or ev.type == "pageview":
        return
    v = props["value"]
    if isinstance(v, str):  # data attributes arrive as strings
        try:
            v = float(v.strip().replace(",", "."))
        except ValueError:
            raise Dropped(DropReason.INVALID_VALUE, "props.value: not a number") from None
    elif type(v) not in (int, float):
        raise Dropped(DropReason.INVALID_VALUE, "props.value: not a number")
    if not math.isfinite(v) or v < 0:
        raise Dropped(DropReason.INVALID_VALUE, "props.value: must be finite and >= 0")
    ev.value = float(v)
    ev.currency = ctx.project.currency


def hash_contact(raw: dict, ev: Event, ctx: Context) -> list[tuple[str, str]]:
    """Normalise + hash; returns the contact parts it had to drop (field, detail)."""
    contact = raw.get("contact")
    if contact is None:
        return []
    if not isinstance(contact, dict):
        raise Dropped(DropReason.INVALID_EVENT, "contact: must be an object")
    dropped: list[tuple[str, str]] = []
    store = ctx.project.store_contacts
    phone_raw = contact.get("phone")
    if phone_raw not in (None, ""):
        phone = normalize_phone(phone_raw) if isinstance(phone_raw, (str, int)) else None
        if phone is None:
            dropped.append(("phone", "phone: not a valid phone number"))
        else:
            ev.phone_hash = keyed_hash(ctx.pii_key, "phone", phone)
            if store:
                ev.phone = phone
    email_raw = contact.get("email")
    if email_raw not in (None, ""):
        email = normalize_email(email_raw) if isinstance(email_raw, str) else None
        if email is None:
            dropped.append(("email", "email: not a valid email address"))
        else:
            ev.email_hash = keyed_hash(ctx.pii_key, "email", email)
            if store:
                ev.email = email
    name = contact.get("name")
    if store and isinstance(name, str):
        ev.contact_name = name.strip()[:MAX_NAME]
    return dropped


# A step may return contact parts it dropped: [(field, detail)] (kept event, warning).
EVENT_STEPS: tuple[tuple[str, Callable[[Any, Event, Context], Any]], ...] = (
    ("validate_shape", validate_shape),
    ("check_type", check_type),
    ("check_timestamp", check_timestamp),
    ("conversion_value", conversion_value),
    ("hash_contact", hash_contact),
)


def collect_context(project: Project, site: Site, client_id: str, user_agent: str,
                    pii_key: bytes, now_ms: int | None = None, drop_bots: bool = True) -> Context:
    now = int(time.time() * 1000) if now_ms is None else now_ms
    return Context(project, site, client_id, user_agent[:MAX_UA], now, pii_key, COLLECT_TYPES,
                   now - WINDOW_PAST_MS, now + WINDOW_FUTURE_MS, drop_bots)


def import_context(project: Project, site: Site, client_id: str, user_agent: str,
                   pii_key: bytes, now_ms: int, drop_bots: bool = True) -> Context:
    # Backfills take any past time; the future bound still catches clock/unit mistakes.
    return Context(project, site, client_id, user_agent[:MAX_UA], now_ms, pii_key, IMPORT_TYPES,
                   IMPORT_MIN_TS, now_ms + WINDOW_FUTURE_MS, drop_bots)


def request_drop(ctx: Context) -> tuple[DropReason, str] | None:
    for _name, step in REQUEST_STEPS:
        found = step(ctx)
        if found is not None:
            return found
    return None


def enrich_one(raw: Any, ctx: Context, index: int, result: Result, seen: set[str]) -> None:
    """Run the event steps on one raw event; append the Event or a rejection to ``result``."""
    ev = Event(ctx.project.id, ctx.site.domain, "", ctx.client_id, "", 0, ctx.now_ms,
               user_agent=ctx.user_agent)
    dropped_parts: list[tuple[str, str]] = []
    try:
        for _name, step in EVENT_STEPS:
            parts = step(raw, ev, ctx)
            if parts:
                dropped_parts.extend(parts)
    except Dropped as d:
        result.reject(index, d.reason, d.detail)
        return
    if ev.event_id in seen:
        result.reject(index, DropReason.DUPLICATE_ID, "same id earlier in this request")
        return
    seen.add(ev.event_id)
    for fld, detail in dropped_parts:
        result.warnings.append({"index": index, "reason": DropReason.INVALID_CONTACT.value,
                                "field": fld, "detail": detail})
        key = (fld, DropReason.INVALID_CONTACT.value)
        result.contact_drops[key] = result.contact_drops.get(key, 0) + 1
    result.events.append(ev)


def enrich_batch(raw_events: list, ctx: Context) -> Result:
    """All events of one /collect request share the context."""
    result = Result()
    found = request_drop(ctx)
    if found is not None:
        reason, detail = found
        for i in range(len(raw_events)):
            result.reject(i, reason, detail)
        return result
    seen: set[str] = set()
    for i, raw in enumerate(raw_events):
        enrich_one(raw, ctx, i, result, seen)
    return result

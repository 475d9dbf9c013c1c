"""Collector routes: /collect (browsers), /api/v1/import/events (trusted backfills), /s.js,
/calltracking/numbers.

An accepted event is in the durable log (the runtime's local log, or Kafka for `skvoz collector`)
*before* the 202 goes out, so an acknowledged event survives a crash; when it cannot be made
durable the answer is 503 with Retry-After. The pipeline dedups by event id, so replays are
harmless; with Redis (``State.edge``) collectors also skip ids published recently, to save load,
and enforce the per-site rate limit (429).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from tracker import enrich
from tracker.app import (STATE, State, SubmitError, Unavailable, add_route, dumps, error,
                         json_response, loads)

COLLECT_MAX_BYTES = 256 * 1024
COLLECT_MAX_EVENTS = 100
IMPORT_MAX_BYTES = 50 * 1024 * 1024
IMPORT_SUBMIT_CHUNK = 5000

COOKIE = "skvoz_cid"
COOKIE_MAX_AGE = 400 * 86400
_JSON_TYPES = frozenset(("application/json", "text/plain", "application/octet-stream", ""))

STATIC_DIR = Path(__file__).parent / "static"


class BodyTooLarge(Exception):
    pass


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, refusing early (by Content-Length) or while streaming (chunked uploads)."""
    cl = request.content_length
    if cl is not None:
        if cl > limit:
            raise BodyTooLarge
        return await request.read()
    buf = bytearray()
    async for chunk in request.content.iter_any():
        buf += chunk
        if len(buf) > limit:
            raise BodyTooLarge
    return bytes(buf)


def _media_type(request: web.Request) -> str:
    # cheaper than request.content_type, which builds a full header parse per request
    return request.headers.get("Content-Type", "").partition(";")[0].strip().lower()


def _cors(resp: web.StreamResponse, origin: str) -> None:
    resp.headers["Access-Control-Allow-Origin"] = origin
    resp.headers["Access-Control-Allow-Credentials"] = "true"
    resp.headers["Vary"] = "Origin"


def _is_https(request: web.Request, st: State) -> bool:
    if st.cfg.server.trust_proxy:
        proto = request.headers.get("X-Forwarded-Proto")
        if proto:
            return proto.split(",")[0].strip().lower() == "https"
    return request.secure


def _refuse(st: State, route: str, status: int, message: str, reason: str,
            origin: str | None = None, **extra: Any) -> web.Response:
    st.metrics.request_errors.inc(route, reason)
    resp = error(status, message, reason=reason, **extra)
    if origin:
        _cors(resp, origin)
    return resp


def _not_submitted(st: State, route: str, e: SubmitError, origin: str | None = None,
                   **extra: Any) -> web.Response:
    resp = _refuse(st, route, e.status, str(e), e.reason, origin, **extra)
    if e.retry_after is not None:
        resp.headers["Retry-After"] = str(e.retry_after)
        if origin:  # let the counter's script read it
            resp.headers["Access-Control-Expose-Headers"] = "Retry-After"
    return resp


def _not_ready() -> web.Response:
    resp = error(503, "server is starting", reason="not_ready")
    resp.headers["Retry-After"] = "1"
    return resp


class RateLimited(SubmitError):
    def __init__(self, limit: int) -> None:
        super().__init__(429, f"more than {limit} events/s for this site; retry later",
                         "rate_limited", retry_after=1)


async def _submit_checked(st: State, site_key: str, project_id: str, events: list) -> int:
    """Submit with the shared edge state when there is one: rate limit, then publish only the
    ids not published before. Returns how many were such duplicates (already durable)."""
    edge = st.edge
    if edge is None:
        await st.submit(events)
        return 0
    adm = await edge.admit(site_key, project_id, [e.event_id for e in events])
    if adm.limited:
        raise RateLimited(edge.limit)
    if adm.in_flight:
        await edge.release(adm)
        raise Unavailable("some of these events are being stored by another request",
                          "in_flight")
    fresh = [e for e in events if e.event_id not in adm.duplicates] if adm.duplicates else events
    if fresh:
        try:
            await st.submit(fresh)
        except Exception:
            await edge.release(adm)
            raise
        await edge.confirm(adm)
    return len(events) - len(fresh)


async def collect(request: web.Request) -> web.Response:
    st = request.app[STATE]
    route = "/collect"
    origin = request.headers.get("Origin")
    if not st.accepting:
        return _not_ready()
    if _media_type(request) not in _JSON_TYPES:
        return _refuse(st, route, 415, "send JSON as application/json or text/plain",
                       "unsupported_media_type")
    try:
        body = await read_body(request, COLLECT_MAX_BYTES)
    except BodyTooLarge:
        return _refuse(st, route, 413, f"body larger than {COLLECT_MAX_BYTES} bytes",
                       "body_too_large")
    try:
        data = loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        return _refuse(st, route, 400, f"body is not valid JSON: {e}", "malformed_body")
    if not isinstance(data, dict):
        return _refuse(st, route, 400, "body must be a JSON object", "malformed_body")
    key = data.get("site")
    if not isinstance(key, str) or not key:
        return _refuse(st, route, 400, "site: the site key is required", "malformed_body")
    found = st.cfg.site_by_key(key)
    if found is None:
        # CORS on refusals too: the counter must be able to read a 403 to stop retrying
        return _refuse(st, route, 403, "unknown site key", "unknown_site", origin)
    project, site = found
    if origin is not None and not st.origin_allowed(origin, project):
        return _refuse(st, route, 403, f"origin {origin[:200]} is not a site of this project",
                       "origin_not_allowed", origin)
    events = data.get("events")
    if not isinstance(events, list) or not events:
        return _refuse(st, route, 400, "events: must be a non-empty array", "malformed_body",
                       origin)
    if len(events) > COLLECT_MAX_EVENTS:
        return _refuse(st, route, 413, f"more than {COLLECT_MAX_EVENTS} events in one request",
                       "too_many_events", origin)

    cid = data.get("client_id")
    if cid is not None and cid != "":
        if not enrich.valid_client_id(cid):
            return _refuse(st, route, 400, "client_id: 1-64 characters of A-Z a-z 0-9 . _ -",
                           "invalid_client_id", origin)
    else:
        # A bad cookie is replaced rather than refused: it would otherwise lock the browser out.
        cid = request.cookies.get(COOKIE)
        if not enrich.valid_client_id(cid):
            cid = secrets.token_urlsafe(15)

    ctx = enrich.collect_context(project, site, cid, request.headers.get("User-Agent", ""),
                                 st.pii_key, drop_bots=st.cfg.server.drop_bots)
    result = enrich.enrich_batch(events, ctx)
    duplicates = 0
    if result.events:
        try:
            duplicates = await _submit_checked(st, key, project.id, result.events)
        except SubmitError as e:
            return _not_submitted(st, route, e, origin)
    _count(st, "collect", project.id, result, duplicates)

    reply: dict[str, Any] = {"client_id": cid, "accepted": len(result.events),
                             "rejected": result.rejected}
    if duplicates:
        reply["duplicates"] = duplicates
    if result.warnings:
        reply["warnings"] = result.warnings
    cookie = f"{COOKIE}={cid}; Max-Age={COOKIE_MAX_AGE}; Path=/; SameSite=Lax"
    if _is_https(request, st):
        cookie += "; Secure"
    headers = {"Content-Type": "application/json", "Set-Cookie": cookie}
    if origin is not None:
        headers.update({"Access-Control-Allow-Origin": origin,
                        "Access-Control-Allow-Credentials": "true", "Vary": "Origin"})
    return web.Response(body=dumps(reply), status=202, headers=headers)


def _count(st: State, endpoint: str, project_id: str, result: enrich.Result,
           duplicates: int = 0) -> None:
    m = st.metrics
    if len(result.events) > duplicates:  # duplicates were counted when first accepted
        m.accepted.inc(endpoint, project_id, by=len(result.events) - duplicates)
    for reason, n in result.reasons.items():
        m.rejected.inc(endpoint, reason, by=n)
    for (fld, reason), n in result.contact_drops.items():
        m.contact_dropped.inc(endpoint, fld, reason, by=n)


async def collect_preflight(request: web.Request) -> web.Response:
    st = request.app[STATE]
    origin = request.headers.get("Origin")
    # The preflight carries no site key, so any project's site domain is acceptable here;
    # the POST itself is checked against its own project.
    if origin is None or not st.origin_allowed(origin, None):
        return _refuse(st, "/collect", 403, "origin is not a site of any project",
                       "origin_not_allowed")
    resp = web.Response(status=204)
    _cors(resp, origin)
    resp.headers["Access-Control-Allow-Methods"] = "POST, OPTIONS"
    asked = request.headers.get("Access-Control-Request-Headers")
    resp.headers["Access-Control-Allow-Headers"] = asked or "Content-Type"
    resp.headers["Access-Control-Max-Age"] = "86400"
    resp.headers["Vary"] = "Origin, Access-Control-Request-Headers"
    return resp


# -- trusted import ---------------------------------------------------------------------------


def _parse_import(body: bytes) -> tuple[list, str | None]:
    """A JSON array, or JSON lines. Returns (items, error); a bad line becomes a None item."""
    text = body.lstrip()
    if text.startswith(b"["):
        try:
            items = loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            return [], f"body is not a valid JSON array: {e}"
        return items, None
    items: list = []
    for line in body.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            items.append(loads(line))
        except (ValueError, UnicodeDecodeError):
            items.append(_BAD_LINE)
    return items, None


_BAD_LINE = object()


def _site_for(project, ref: Any):
    if not isinstance(ref, str) or not ref:
        return None
    for s in project.sites:
        if s.key == ref:
            return s
    dom = ref.strip().lower().rstrip(".").removeprefix("www.")
    for s in project.sites:
        if s.domain == dom:
            return s
    return None


async def import_events(request: web.Request) -> web.Response:
    from tracker.api import authenticate

    st = request.app[STATE]
    route = "/api/v1/import/events"
    project, denied = authenticate(request)
    if denied is not None:
        return denied
    if not st.accepting:
        return _not_ready()
    if _media_type(request) not in _JSON_TYPES | {"application/x-ndjson", "application/jsonl"}:
        return _refuse(st, route, 415, "send a JSON array or JSON lines", "unsupported_media_type")
    try:
        body = await read_body(request, IMPORT_MAX_BYTES)
    except BodyTooLarge:
        return _refuse(st, route, 413, f"body larger than {IMPORT_MAX_BYTES} bytes",
                       "body_too_large")
    items, problem = _parse_import(body)
    if problem:
        return _refuse(st, route, 400, problem, "malformed_body")
    if not isinstance(items, list) or not items:
        return _refuse(st, route, 400, "no events in the body", "malformed_body")

    now = int(time.time() * 1000)
    drop_bots = st.cfg.server.drop_bots
    result = enrich.Result()
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item is _BAD_LINE:
            result.reject(i, enrich.DropReason.INVALID_EVENT, "line is not valid JSON")
            continue
        if not isinstance(item, dict):
            result.reject(i, enrich.DropReason.INVALID_EVENT, "event must be a JSON object")
            continue
        site = _site_for(project, item.get("site"))
        if site is None:
            result.reject(i, enrich.DropReason.UNKNOWN_SITE,
                          "site: not a site key or domain of this project")
            continue
        cid = item.get("client_id")
        if not enrich.valid_client_id(cid):
            result.reject(i, enrich.DropReason.INVALID_CLIENT_ID,
                          "client_id: 1-64 characters of A-Z a-z 0-9 . _ -")
            continue
        ua = item.get("user_agent")
        ctx = enrich.import_context(project, site, cid, ua if isinstance(ua, str) else "",
                                    st.pii_key, now, drop_bots)
        found = enrich.request_drop(ctx)
        if found is not None:
            result.reject(i, *found)
            continue
        enrich.enrich_one(item, ctx, i, result, seen)

    submitted = 0
    try:
        # Big imports go in chunks (local log appends off the loop). No edge dedup here: a
        # backfill is not a browser replaying, and the pipeline dedups anyway.
        for start in range(0, len(result.events), IMPORT_SUBMIT_CHUNK):
            chunk = result.events[start:start + IMPORT_SUBMIT_CHUNK]
            await st.submit(chunk, offload=True)
            submitted += len(chunk)
    except SubmitError as e:
        return _not_submitted(st, route, e, accepted=submitted)
    result.events = result.events[:submitted]
    _count(st, "import", project.id, result)
    reply: dict[str, Any] = {"accepted": submitted, "rejected": result.rejected}
    if result.warnings:
        reply["warnings"] = result.warnings
    return json_response(reply, status=202)


# -- snippet and call tracking ----------------------------------------------------------------

_static_cache: dict[str, tuple[float, int, bytes, str]] = {}


def _load_static(name: str) -> tuple[bytes, str] | None:
    path = STATIC_DIR / name
    try:
        stat = path.stat()
    except OSError:
        return None
    cached = _static_cache.get(name)
    if cached and cached[0] == stat.st_mtime and cached[1] == stat.st_size:
        return cached[2], cached[3]
    data = path.read_bytes()
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    _static_cache[name] = (stat.st_mtime, stat.st_size, data, etag)
    return data, etag


def _etag_matches(header: str | None, etag: str) -> bool:
    if not header:
        return False
    if header.strip() == "*":
        return True
    return any(t.strip().removeprefix("W/") == etag for t in header.split(","))


async def snippet(request: web.Request) -> web.Response:
    loaded = _load_static("s.js")
    if loaded is None:
        return error(404, "the counter script is not built: tracker/static/s.js is missing")
    data, etag = loaded
    headers = {"ETag": etag, "Cache-Control": "public, max-age=3600"}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=data, headers={**headers,
                        "Content-Type": "application/javascript; charset=utf-8"})


async def calltracking_numbers(request: web.Request) -> web.Response:
    st = request.app[STATE]
    key = request.query.get("site")
    if not key:
        return error(400, "site: the site key is required", reason="malformed_request")
    if st.cfg.site_by_key(key) is None:
        return error(403, "unknown site key", reason="unknown_site")
    cid = request.query.get("client_id")
    if cid is not None and not enrich.valid_client_id(cid):
        return error(400, "client_id: 1-64 characters of A-Z a-z 0-9 . _ -",
                     reason="invalid_client_id")
    return error(404, "call tracking is not configured for this site")


def add_routes(app: web.Application) -> None:
    add_route(app, "POST", "/collect", collect)
    add_route(app, "OPTIONS", "/collect", collect_preflight)
    add_route(app, "POST", "/api/v1/import/events", import_events)
    add_route(app, "GET", "/s.js", snippet)
    add_route(app, "GET", "/calltracking/numbers", calltracking_numbers)

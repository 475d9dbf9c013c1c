"""The aiohttp application and the `skvoz run` lifecycle.

``build_app`` wires routes over a ``State`` (config, runtime, store, counters); tests build it
with a fake runtime. ``serve`` is the embedded default: listen first (so /healthz answers 503
while starting), then migrate ClickHouse, start the runtime, and flip to ready; on SIGTERM or
SIGINT stop accepting, drain the runtime, close the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from streams.model import Event
from tracker.config import Config, Project
from tracker.metrics import Metrics

log = logging.getLogger("skvoz")

try:  # orjson when installed: the collector's per-request JSON is a large share of its cost
    import orjson

    def dumps(data: Any) -> bytes:
        return orjson.dumps(data, default=str)

    loads = orjson.loads
except ImportError:  # pragma: no cover - the stdlib is correct, only slower

    def dumps(data: Any) -> bytes:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str).encode()

    loads = json.loads

# aiohttp's own cap; each route applies its own smaller limit while reading.
MAX_BODY = 50 * 1024 * 1024


class RuntimeLike(Protocol):
    def submit(self, events: list[Event]) -> None: ...
    def stats(self) -> dict: ...


@dataclass
class State:
    cfg: Config
    runtime: RuntimeLike | None = None
    store: Any = None  # sink.store.Store
    ready: bool = False
    metrics: Metrics = field(default_factory=Metrics)
    # blocking ClickHouse calls run here so the loop keeps serving /collect
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=4, thread_name_prefix="skvoz-q"))
    startup_error: str = ""

    def __post_init__(self) -> None:
        self.pii_key = self.cfg.pii_key.encode()
        extra = [_host_of(o) or o.lower() for o in self.cfg.server.allowed_origins]
        self.extra_hosts = frozenset(h for h in extra if h)
        self.all_domains = tuple(sorted({s.domain for p in self.cfg.projects for s in p.sites}))
        self.project_domains = {p.id: tuple(s.domain for s in p.sites) for p in self.cfg.projects}

    def origin_allowed(self, origin: str, project: Project | None) -> bool:
        """An Origin is allowed when its host is a site domain (or a subdomain of one) of the
        project (of any project when None: a preflight does not say which site it is for)."""
        host = _host_of(origin)
        if not host:
            return False
        if host in self.extra_hosts or origin.lower() in self.extra_hosts:
            return True
        domains = self.all_domains if project is None else self.project_domains.get(project.id, ())
        return _host_matches(host, domains)


@lru_cache(maxsize=1024)
def _host_of(origin: str) -> str:
    """'https://www.Example.com:8443' -> 'www.example.com'; '' when it is not an origin."""
    scheme, sep, rest = origin.strip().partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        return ""
    rest = rest.split("/", 1)[0]
    if rest.startswith("["):  # IPv6 literal
        return rest.split("]", 1)[0].lower() + "]"
    return rest.rsplit(":", 1)[0].lower() if ":" in rest else rest.lower()


def _host_matches(host: str, domains: tuple[str, ...]) -> bool:
    for d in domains:
        if host == d or host.endswith("." + d):
            return True
    return False


STATE: web.AppKey[State] = web.AppKey("state", State)


def json_response(data: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=dumps(data), status=status, content_type="application/json",
                        headers=headers)


def error(status: int, message: str, **extra: Any) -> web.Response:
    return json_response({"error": message, **extra}, status=status)


def _instrument(route: str, handler):
    """Every failure leaves as JSON and every reply is counted per route.

    A wrapper per route rather than an aiohttp middleware: the middleware machinery cost
    ~15% of a 1-event /collect request, and the collector's throughput budget is tight."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as e:
            if e.status < 400:
                raise
            resp = error(e.status, e.reason or "error", path=request.path)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("unhandled error on %s %s", request.method, request.path)
            resp = error(500, "internal error")
        request.app[STATE].metrics.requests.inc(route, str(resp.status))
        return resp

    wrapped.__name__ = getattr(handler, "__name__", "handler")
    return wrapped


def add_route(app: web.Application, method: str, path: str, handler) -> None:
    """Register an instrumented handler; a GET also answers HEAD."""
    wrapped = _instrument(path, handler)
    app.router.add_route(method, path, wrapped)
    if method == "GET":
        app.router.add_route("HEAD", path, wrapped)


def _finish_routes(app: web.Application) -> None:
    """JSON 405 (with Allow) for known paths and JSON 404 for the rest, instead of aiohttp's
    plain-text ones: a catch-all route per path, tried after the real ones."""
    allowed: dict[str, set[str]] = {}
    for r in app.router.routes():
        allowed.setdefault(r.resource.canonical, set()).add(r.method)
    for path, methods in allowed.items():
        allow = ", ".join(sorted(methods))

        async def not_allowed(request: web.Request, allow: str = allow) -> web.Response:
            resp = error(405, f"method {request.method} not allowed; use {allow}",
                         path=request.path)
            resp.headers["Allow"] = allow
            return resp

        app.router.add_route("*", path, _instrument(path, not_allowed))

    async def not_found(request: web.Request) -> web.Response:
        return error(404, "not found", path=request.path)

    app.router.add_route("*", "/{tail:.*}", _instrument("unmatched", not_found))


async def healthz(request: web.Request) -> web.Response:
    st = request.app[STATE]
    if not st.ready:
        body = {"status": "failed" if st.startup_error else "starting"}
        if st.startup_error:
            body["error"] = st.startup_error
        return json_response(body, status=503, headers={"Retry-After": "1"})
    out: dict[str, Any] = {"status": "ok"}
    status = 200
    if st.runtime is not None:
        try:
            stats = st.runtime.stats()
            out["runtime"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
            if stats.get("running") is False:  # the processor thread died: not healthy
                out["status"], status = "runtime stopped", 503
        except Exception as e:  # health must answer even if stats are unwell
            out["runtime_error"] = str(e)
    return json_response(out, status=status)


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.Response(text=st.metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def build_app(state: State) -> web.Application:
    from tracker import api, collector

    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    state.metrics.add_gauges("skvoz_ready", "1 when the server accepts events",
                             lambda: {"state": int(state.ready)})
    state.metrics.add_gauges("skvoz_runtime", "embedded runtime counter",
                             lambda: state.runtime.stats() if state.runtime else {})
    add_route(app, "GET", "/healthz", healthz)
    add_route(app, "GET", "/metrics", metrics)
    collector.add_routes(app)
    api.add_routes(app)
    _finish_routes(app)
    return app


# -- skvoz run -------------------------------------------------------------------------------


def _start_backend(state: State) -> None:
    """Blocking: connect + migrate ClickHouse, start the runtime (replays the local log)."""
    from sink.store import Store
    from streams.embedded import Runtime

    cfg = state.cfg
    data = cfg.data_path
    data.mkdir(parents=True, exist_ok=True)
    store = Store.connect(cfg.clickhouse.url, data, cfg.clickhouse.database)
    state.store = store
    applied = store.migrate()
    if applied:
        log.info("migrations applied: %s", ", ".join(map(str, applied)))
    runtime = Runtime(
        cfg.rules(), data, write=store.write,  # the runtime keeps its log in data/pipeline
        batch_max_events=cfg.pipeline.batch_max_events,
        batch_max_ms=cfg.pipeline.batch_max_ms,
        snapshot_every_s=cfg.pipeline.snapshot_every_s,
    )
    runtime.start()
    state.runtime = runtime


def _stop_backend(state: State) -> None:
    rt, store = state.runtime, state.store
    if rt is not None:
        try:
            rt.stop()  # type: ignore[attr-defined]
        except Exception:
            log.exception("runtime stop failed")
    if store is not None:
        try:
            store.close()
        except Exception:
            log.exception("store close failed")


async def serve(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    state = State(cfg)
    app = build_app(state)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        log.error("cannot listen on %s:%s: %s", host, port, e)
        return 2
    bound = [a[:2] for a in runner.addresses if isinstance(a, tuple)]
    log.info("listening on %s", ", ".join(f"http://{h}:{p}" for h, p in bound) or f"{host}:{port}")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    code = 0
    try:
        await loop.run_in_executor(state.executor, _start_backend, state)
        state.ready = True
        log.info("ready: data_dir=%s clickhouse=%s", Path(cfg.data_dir).resolve(),
                 cfg.clickhouse.url or "embedded chdb")
    except Exception as e:
        # the reason, not a traceback: these are mostly paths, permissions, a busy chdb
        log.error("startup failed: %s: %s", type(e).__name__, e)
        log.debug("startup failure", exc_info=True)
        state.startup_error = f"{type(e).__name__}: {e}"
        code = 1
        stop.set()
    await stop.wait()
    log.info("shutting down")
    state.ready = False
    await runner.cleanup()  # stop accepting, finish in-flight requests
    await loop.run_in_executor(state.executor, _stop_backend, state)
    state.executor.shutdown(wait=False, cancel_futures=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return code

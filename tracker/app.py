"""The aiohttp application and the `skvoz run` / `skvoz collector` lifecycles.

``build_app`` wires routes over a ``State`` (config, runtime or publisher, store, counters);
tests build it with a fake runtime. ``serve`` is the embedded default: listen first (so /healthz
answers 503 while starting), then migrate ClickHouse, start the runtime, and flip to ready; on
SIGTERM or SIGINT stop accepting, drain the runtime, close the store. ``serve_collector`` is the
scale-out collector: the same collector routes publishing to Kafka, no ClickHouse, no query API.
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


class PublisherLike(Protocol):
    async def publish(self, events: list[Event]) -> None: ...
    def health(self) -> dict: ...
    def stats(self) -> dict: ...


class SubmitError(Exception):
    """Events were not accepted; ``status`` and ``reason`` go to the client."""

    def __init__(self, status: int, message: str, reason: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.reason, self.retry_after = status, reason, retry_after


class Unavailable(SubmitError):
    """Not durably accepted for now (log or Kafka unavailable): 503, the client retries."""

    def __init__(self, message: str, reason: str = "unavailable", retry_after: int = 1):
        super().__init__(503, message, reason, retry_after)


@dataclass
class State:
    cfg: Config
    runtime: RuntimeLike | None = None
    store: Any = None  # sink.store.Store
    publisher: PublisherLike | None = None  # Kafka (`skvoz collector`) instead of the runtime
    edge: Any = None  # tracker.edge_state.EdgeState: shared dedup and rate limit (Redis)
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

    @property
    def accepting(self) -> bool:
        return self.ready and (self.runtime is not None or self.publisher is not None)

    async def submit(self, events: list[Event], *, offload: bool = False) -> None:
        """Hand events to the durable log (local log or Kafka); returns once they are durable.
        ``offload``: a big batch, appended to the local log off the event loop."""
        if self.publisher is not None:
            await self.publisher.publish(events)
            return
        rt = self.runtime
        if rt is None:
            raise Unavailable("server is starting", "not_ready")
        try:
            if offload:
                await asyncio.get_running_loop().run_in_executor(None, rt.submit, events)
            else:
                rt.submit(events)
        except RuntimeError as e:
            raise Unavailable(f"not accepting events: {e}", "not_ready") from None


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
        if st.publisher is not None:
            body["kafka"] = st.publisher.health()
        return json_response(body, status=503, headers={"Retry-After": "1"})
    out: dict[str, Any] = {"status": "ok"}
    status = 200
    if st.publisher is not None:
        out["kafka"] = st.publisher.health()
        if not out["kafka"]["healthy"]:  # events would get 503 here: route them elsewhere
            out["status"], status = "kafka unavailable", 503
    if st.edge is not None:  # informative only: the collector works without Redis
        out["redis"] = st.edge.health()
    if st.runtime is not None:
        try:
            stats = st.runtime.stats()
            out["runtime"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
            if stats.get("running") is False:  # the processor thread died: not healthy
                out["status"], status = "runtime stopped", 503
        except Exception as e:  # health must answer even if stats are unwell
            out["runtime_error"] = str(e)
    return json_response(out, status=status)


async def livez(request: web.Request) -> web.Response:
    """Liveness: the event loop answers. Readiness (/healthz) also depends on Kafka or the
    runtime, and an orchestrator must not restart collectors because Kafka is away."""
    return json_response({"status": "alive"})


async def metrics(request: web.Request) -> web.Response:
    st = request.app[STATE]
    return web.Response(text=st.metrics.render(),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def build_app(state: State, *, query_api: bool = True) -> web.Application:
    """``query_api=False``: the collector routes only (`skvoz collector`)."""
    from tracker import api, collector

    app = web.Application(client_max_size=MAX_BODY)
    app[STATE] = state
    state.metrics.add_gauges("skvoz_ready", "1 when the server accepts events",
                             lambda: {"state": int(state.ready)})
    state.metrics.add_gauges("skvoz_runtime", "embedded runtime counter",
                             lambda: state.runtime.stats() if state.runtime else {})
    state.metrics.add_gauges("skvoz_kafka", "Kafka publisher counter",
                             lambda: state.publisher.stats() if state.publisher else {})
    state.metrics.add_gauges("skvoz_edge", "Redis edge state counter",
                             lambda: state.edge.stats() if state.edge else {})
    add_route(app, "GET", "/healthz", healthz)
    add_route(app, "GET", "/livez", livez)
    add_route(app, "GET", "/metrics", metrics)
    collector.add_routes(app)
    if query_api:
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


async def _listen(app: web.Application, host: str, port: int,
                  shutdown_timeout: float = 5) -> web.AppRunner | None:
    """Start serving ``app``; None (logged) when the address cannot be bound."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError as e:
        await runner.cleanup()
        log.error("cannot listen on %s:%s: %s", host, port, e)
        return None
    bound = [a[:2] for a in runner.addresses if isinstance(a, tuple)]
    log.info("listening on %s", ", ".join(f"http://{h}:{p}" for h, p in bound) or f"{host}:{port}")
    return runner


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def serve(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    """Run until SIGTERM/SIGINT. Returns the process exit code."""
    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    state = State(cfg)
    app = build_app(state)
    runner = await _listen(app, host, port)
    if runner is None:
        return 2

    loop = asyncio.get_running_loop()
    stop = _stop_on_signals()

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


# -- skvoz collector --------------------------------------------------------------------------


async def serve_collector(cfg: Config, host: str | None = None, port: int | None = None) -> int:
    """The scale-out collector: run until SIGTERM/SIGINT. Listens at once and answers /healthz
    503 until Kafka is reachable (retrying by itself); on shutdown finishes the in-flight
    requests, then flushes the producer."""
    from tracker.kafka_publisher import KafkaPublisher

    host = host or cfg.server.host
    port = cfg.server.port if port is None else port
    if not log.isEnabledFor(logging.DEBUG):
        # aiokafka logs every failed reconnect (several lines a second while a broker is down);
        # the publisher logs the transitions and /healthz shows the reason.
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    state = State(cfg)
    publisher = KafkaPublisher(cfg.kafka)
    state.publisher = publisher
    if cfg.redis.url:
        from tracker.edge_state import EdgeState

        # A claim outlives the longest publish (the ack bound) by a margin.
        state.edge = EdgeState(cfg.redis.url, dedup_window_s=cfg.redis.dedup_window_s,
                               rate_limit_per_site=cfg.server.rate_limit_per_site,
                               claim_ms=cfg.kafka.ack_timeout_ms + 5000,
                               prefix=cfg.kafka.topic_prefix)
    elif cfg.server.rate_limit_per_site:
        log.warning("[server] rate_limit_per_site needs [redis] url; not enforced")
    app = build_app(state, query_api=False)
    # in-flight requests may wait for their Kafka acks before the server closes
    runner = await _listen(app, host, port, shutdown_timeout=cfg.kafka.ack_timeout_ms / 1000 + 2)
    if runner is None:
        return 2
    stop = _stop_on_signals()

    async def connect() -> None:
        await publisher.start()
        state.ready = True
        log.info("ready: kafka=%s topic=%s redis=%s", cfg.kafka.bootstrap, publisher.topic,
                 "on" if state.edge is not None else "off")

    starter = asyncio.create_task(connect(), name="kafka-connect")
    await stop.wait()
    log.info("shutting down")
    state.ready = False
    starter.cancel()
    await asyncio.gather(starter, return_exceptions=True)
    await runner.cleanup()  # stop accepting, finish in-flight requests (they await acks)
    await publisher.stop()
    if state.edge is not None:
        await state.edge.close()
    state.executor.shutdown(wait=False, cancel_futures=True)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(sig)
    log.info("stopped")
    return 0

"""`skvoz` command line: init, run, migrate, dev up|down|status, worker, sink, collector.

Exit codes: 0 ok, 1 runtime failure, 2 bad usage or config (message on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path
from typing import Sequence

from tracker import config as configmod
from tracker.config import ConfigError


class UsageError(Exception):
    """A problem the user can fix; printed without a traceback, exit 2."""


def _config_path(args: argparse.Namespace) -> Path:
    return Path(args.config or os.environ.get("SKVOZ_CONFIG") or configmod.DEFAULT_CONFIG)


def _load(args: argparse.Namespace) -> configmod.Config:
    path = _config_path(args)
    if not path.exists() and not os.environ.get("SKVOZ_PROJECTS"):
        raise UsageError(f"{path}: no such config file; create one with `skvoz init --config {path}`")
    return configmod.load(path)


def cmd_init(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists; use --force to overwrite it")
    domain = args.domain.strip().lower()
    try:  # same rules as the config loader, so init never writes a file load() refuses
        configmod.Site(domain=domain, key="x" * 8)
    except Exception:
        raise UsageError(f"--domain {args.domain!r} is not a domain name") from None
    text, site_key, token = configmod.starter_toml(domain=domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    cfg = configmod.load(path, environ={})  # parse back what we wrote
    host, port = cfg.server.host, cfg.server.port
    print(f"wrote {path}")
    print()
    print("Put this on every page of the site, before </head>:")
    print(f'  <script async src="http://{host}:{port}/s.js" data-site="{site_key}"></script>')
    print()
    print(f"API token (Authorization: Bearer ...): {token}")
    print(f"Start the server: skvoz run --config {shlex.quote(str(path))}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from tracker.app import serve

    cfg = _load(args)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number")
    return asyncio.run(serve(cfg, args.host, args.port))


def cmd_migrate(args: argparse.Namespace) -> int:
    from sink.store import Store

    cfg = _load(args)
    store = Store.connect(cfg.clickhouse.url, cfg.data_path, cfg.clickhouse.database)
    try:
        applied = store.migrate()
    finally:
        store.close()
    where = cfg.clickhouse.url or f"embedded ClickHouse in {cfg.data_path}"
    if applied:
        print(f"applied {len(applied)} migration(s) to {cfg.clickhouse.database} ({where}):")
        for name in applied:
            print(f"  {name}")
    else:
        print(f"schema {cfg.clickhouse.database} is up to date ({where}); nothing applied")
    return 0


def _dev_state_dir(args: argparse.Namespace) -> Path:
    if args.state_dir:
        return Path(args.state_dir)
    path = _config_path(args)
    if path.exists() or os.environ.get("SKVOZ_PROJECTS"):
        data_dir = configmod.load(path).data_path
    else:  # the dev stack does not need a full config: take data_dir from env or default
        data_dir = Path(os.environ.get("SKVOZ_DATA_DIR") or configmod.Config().data_dir)
    return data_dir / "dev"


def cmd_dev(args: argparse.Namespace) -> int:
    try:
        from tracker import devstack
    except ImportError as e:
        if e.name and not e.name.startswith("tracker.devstack") and e.name != "tracker":
            print(f"skvoz dev: the dev stack needs {e.name!r}: pip install -e '.[scale]'",
                  file=sys.stderr)
        else:
            print("skvoz dev: the dev stack (tracker/devstack.py) is not available in this "
                  "installation", file=sys.stderr)
        return 2
    state_dir = _dev_state_dir(args)
    action = getattr(devstack, args.action, None)
    if action is None:
        print(f"skvoz dev: this dev stack has no {args.action!r} action", file=sys.stderr)
        return 2
    dev_error = getattr(devstack, "DevStackError", None) or RuntimeError
    try:
        result = action(state_dir)
    except dev_error as e:
        print(f"skvoz dev {args.action}: {e}", file=sys.stderr)
        return 2
    if args.action == "status" and isinstance(result, dict):
        # comments first, so `eval "$(skvoz dev status)"` still only sets variables
        for name, info in result.items():
            if isinstance(info, dict) and "running" in info:
                details = ", ".join(f"{k}={v}" for k, v in info.items()
                                    if k != "running" and isinstance(v, (str, int)))
                state = "running" if info["running"] else "stopped"
                print(f"# {name}: {state}" + (f" ({details})" if details else ""))
        result = result.get("settings") or {}
    if isinstance(result, dict):
        for key, value in result.items():
            print(f"export {key}={shlex.quote(str(value))}")
    elif result is not None:
        print(f"# {result}")
    if args.action == "down":
        print(f"# dev stack in {state_dir} stopped")
    return 0


def _scaleout_config(args: argparse.Namespace) -> configmod.Config:
    cfg = _load(args)
    if not cfg.kafka.bootstrap:
        raise UsageError("[kafka] bootstrap is empty; set it in the config or SKVOZ_KAFKA_BOOTSTRAP")
    return cfg


def cmd_worker(args: argparse.Namespace) -> int:
    from streams.faust_app import heartbeat_age, run_worker

    cfg = _scaleout_config(args)
    if args.alive is not None:  # a liveness probe, not a worker
        age = heartbeat_age(cfg)
        if age is None or age > args.alive:
            said = "never" if age is None else f"{age:.0f}s ago"
            print(f"skvoz worker: not alive: last heartbeat {said} (limit {args.alive:.0f}s)", file=sys.stderr)
            return 1
        print(f"skvoz worker: alive (heartbeat {age:.0f}s ago)")
        return 0
    return run_worker(cfg, store=args.store, session_timeout=args.session_timeout)


def cmd_sink(args: argparse.Namespace) -> int:
    from sink.kafka_sink import serve_sink

    cfg = _scaleout_config(args)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number")
    return asyncio.run(serve_sink(cfg, args.host, args.port, session_timeout=args.session_timeout))


def cmd_collector(args: argparse.Namespace) -> int:
    from tracker.app import serve_collector

    cfg = _scaleout_config(args)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: not a port number")
    return asyncio.run(serve_collector(cfg, args.host, args.port))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="skvoz", description="Skvoz end-to-end marketing analytics")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", metavar="PATH",
                        help=f"config file (default $SKVOZ_CONFIG or {configmod.DEFAULT_CONFIG})")
        return sp

    init = with_config(sub.add_parser("init", help="write a starter skvoz.toml"))
    init.add_argument("--domain", default="example.com", help="the first site's domain")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(func=cmd_init)

    run = with_config(sub.add_parser("run", help="serve: collector, pipeline, ClickHouse, API"))
    run.add_argument("--host", help="listen address (default from config)")
    run.add_argument("--port", type=int, help="listen port (default from config)")
    run.set_defaults(func=cmd_run)

    mig = with_config(sub.add_parser("migrate", help="apply ClickHouse schema migrations"))
    mig.set_defaults(func=cmd_migrate)

    dev = with_config(sub.add_parser("dev", help="local Kafka/Redis/ClickHouse for development"))
    dev.add_argument("action", choices=("up", "down", "status"))
    dev.add_argument("--state-dir", help="where the dev stack keeps its state "
                                         "(default <data_dir>/dev)")
    dev.set_defaults(func=cmd_dev)

    worker = with_config(sub.add_parser("worker", help="scale-out stream worker (Faust): Kafka events -> rows"))
    worker.add_argument("--store", default="memory://",
                        help="table store: memory:// (state read back from the changelogs on start) "
                             "or rocksdb:// (under data_dir/worker)")
    worker.add_argument("--session-timeout", type=float, default=30.0, metavar="S",
                        help="seconds before a silent worker's partitions move to the others")
    worker.add_argument("--alive", type=float, nargs="?", const=60.0, metavar="S",
                        help="do not run: exit 0 if this machine's worker showed its event loop "
                             "running in the last S seconds (default 60), else 1; a liveness probe")
    worker.set_defaults(func=cmd_worker)

    sink = with_config(sub.add_parser("sink", help="Kafka rows -> ClickHouse; serves the query API"))
    sink.add_argument("--host", help="listen address (default from config)")
    sink.add_argument("--port", type=int, help="listen port (default from config)")
    sink.add_argument("--session-timeout", type=float, default=10.0, metavar="S",
                      help="seconds before a silent sink's partitions move to another sink")
    sink.set_defaults(func=cmd_sink)

    coll = with_config(sub.add_parser("collector", help="scale-out HTTP collector: events -> Kafka"))
    coll.add_argument("--host", help="listen address (default from config)")
    coll.add_argument("--port", type=int, help="listen port (default from config)")
    coll.set_defaults(func=cmd_collector)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("SKVOZ_LOG_LEVEL", "INFO").upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UsageError) as e:
        print(f"skvoz {args.command}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # e.g. ClickHouse unreachable: say what failed, keep the trace in debug
        logging.getLogger("skvoz").debug("command failed", exc_info=True)
        print(f"skvoz {args.command}: {type(e).__name__}: {e}", file=sys.stderr)
        print("(set SKVOZ_LOG_LEVEL=DEBUG for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

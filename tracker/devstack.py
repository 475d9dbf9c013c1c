"""Local Kafka (KRaft, official Apache jars from Maven Central) and Redis for development and tests.

One implementation behind ``skvoz dev up/down/status`` and the pytest ``kafka_stack`` fixture::

    settings = up(Path("skvoz-data/dev"))   # {"SKVOZ_KAFKA_BOOTSTRAP": "127.0.0.1:PORT", ...}
    down(Path("skvoz-data/dev"))

The broker is a single KRaft node (broker+controller in one JVM) on loopback. Its jars are
resolved once with ``mvn`` from ``deploy/kafka/pom.xml`` into ``~/.cache/skvoz/kafka-<v>/libs``.
Everything else (config, log dir, logs, pids, ports) lives under the state dir, so the data
survives ``stop_kafka``/``start_kafka``/``restart_kafka`` and ``down``/``up``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

KAFKA_VERSION = "4.3.1"  # keep in step with deploy/kafka/pom.xml and deploy/docker-compose.yml
STATE_FILE = "dev.json"
KAFKA_START_TIMEOUT_S = 90.0
REDIS_START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 30.0
POM = Path(__file__).resolve().parents[1] / "deploy" / "kafka" / "pom.xml"
# Set to 1 to forbid `up` from running apt-get to install redis-server.
NO_INSTALL_ENV = "SKVOZ_DEVSTACK_NO_INSTALL"


class DevStackError(RuntimeError):
    """Something the developer has to fix; the message says what."""


# -- small process helpers -----------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[devstack] {msg}", file=sys.stderr, flush=True)


def _reap(pid: int) -> None:
    # Our own children become zombies when they exit; reap them so liveness checks are right.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int | None, marker: str) -> bool:
    """True if ``pid`` runs and its command line contains ``marker`` (guards against pid reuse)."""
    if not pid:
        return False
    _reap(pid)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
        return False
    cmd = _cmdline(pid)
    # The java launcher re-execs itself; meanwhile cmdline reads back empty. Only a non-empty
    # command line without our marker means the pid now belongs to someone else.
    return not cmd or marker in cmd


def _stop_pid(pid: int | None, marker: str, timeout: float, hard: bool = False) -> None:
    if not _alive(pid, marker):
        return
    assert pid is not None
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL if hard else signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, marker):
            return
        time.sleep(0.05)
    _log(f"pid {pid} ignored SIGTERM for {timeout:.0f}s; killing it")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _port_busy(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _check_port(port: int, what: str) -> None:
    if _port_busy(port):
        raise DevStackError(
            f"port {port} for {what} is busy on 127.0.0.1; stop whatever listens there "
            f"(`ss -ltnp 'sport = :{port}'`) or choose another port"
        )


def _spawn(argv: list[str], log_path: Path, cwd: Path) -> int:
    # New session + no inherited fds: the child outlives `skvoz dev up` and never holds the
    # caller's stdout/stderr pipes (pytest capture or a shell $(...) would otherwise hang).
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def run_coro(coro_factory: Callable[[], Any]) -> Any:
    """asyncio.run that also works when the caller already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_factory())
    box: dict[str, Any] = {}

    def runner() -> None:
        try:
            box["v"] = asyncio.run(coro_factory())
        except BaseException as e:  # handed back to the caller's thread
            box["e"] = e

    t = threading.Thread(target=runner, daemon=True)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


# -- state file ----------------------------------------------------------------------------------


def _read_state(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state_dir: Path, state: dict[str, Any]) -> None:
    tmp = state_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True))
    tmp.replace(state_dir / STATE_FILE)


@contextlib.contextmanager
def _locked(state_dir: Path):
    """Serialise up/down/restart on one state dir (two test processes, or CLI + tests)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    with open(state_dir / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- Kafka ---------------------------------------------------------------------------------------


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "skvoz"


def find_java() -> str:
    home = os.environ.get("JAVA_HOME")
    java = str(Path(home) / "bin" / "java") if home and (Path(home) / "bin" / "java").exists() else None
    java = java or shutil.which("java")
    if not java:
        raise DevStackError(
            "java not found: Kafka needs a JDK/JRE 17+ (Debian: apt-get install -y openjdk-17-jre-headless)"
        )
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    # `openjdk version "17.0.15"` / `"1.8.0_392"`
    try:
        ver = out.split('"')[1]
        major = int(ver.split(".")[1] if ver.startswith("1.") else ver.split(".")[0].split("-")[0])
    except (IndexError, ValueError):
        major = 0
    if major < 17:
        raise DevStackError(f"Kafka {KAFKA_VERSION} needs Java 17+, {java} is: {out.strip()[:200]}")
    return java


def kafka_libs(version: str = KAFKA_VERSION) -> Path:
    """The broker's jar dir, resolved with Maven on first use and cached for later runs."""
    root = _cache_root() / f"kafka-{version}"
    libs = root / "libs"
    done = root / ".complete"
    if done.exists() and any(libs.glob("kafka_2.13-*.jar")):
        return libs
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another process may be downloading the same jars
        if done.exists() and any(libs.glob("kafka_2.13-*.jar")):
            return libs
        mvn = shutil.which("mvn")
        if not mvn:
            raise DevStackError(
                "mvn not found: the Kafka jars are fetched from Maven Central with Maven "
                "(Debian: apt-get install -y maven)"
            )
        if not POM.exists():
            raise DevStackError(f"{POM} is missing; run from a source checkout of skvoz")
        tmp = root / "libs.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        _log(f"fetching Apache Kafka {version} jars from Maven Central into {libs} (once)")
        t0 = time.monotonic()
        r = subprocess.run(
            [mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
             f"-DoutputDirectory={tmp}", f"-Dkafka.version={version}", "-DincludeScope=runtime"],
            capture_output=True, text=True,
        )
        if r.returncode != 0:
            raise DevStackError(f"mvn could not fetch Kafka {version}:\n{(r.stdout + r.stderr)[-3000:]}")
        shutil.rmtree(libs, ignore_errors=True)
        tmp.replace(libs)
        done.write_text(f"{time.time()}\n")
        _log(f"Kafka jars ready in {time.monotonic() - t0:.1f}s")
    return libs


def _cluster_id() -> str:
    while True:  # Kafka's own generator avoids ids that start with '-' (they look like flags)
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cid.startswith("-"):
            return cid


_LOG4J2 = """\
# Console only: devstack sends stdout to kafka/kafka.log.
status = warn
# Kafka logs its own shutdown; log4j's hook would close the appender before that.
shutdownHook = disable
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = STDOUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
"""


def _server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    return f"""\
# Written by tracker/devstack.py: one KRaft node, broker and controller in one JVM, loopback only.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}
# Topics are created explicitly (skvoz code or tests); a typo must not create a topic.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
# Fewer internal partitions: a cold group coordinator is ready in ms, not seconds.
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Consumers join at once instead of waiting 3 s for more members.
group.initial.rebalance.delay.ms=0
# Let tests use short session timeouts so a killed consumer is noticed quickly.
group.min.session.timeout.ms=500
# After a crash (SIGKILL) the restarted broker is refused as a duplicate until the controller
# expires the old registration; 9 s by default, 2 s here.
broker.session.timeout.ms=2000
broker.heartbeat.interval.ms=500
num.network.threads=2
num.io.threads=4
log.retention.hours=168
"""


def _kafka_paths(state_dir: Path) -> dict[str, Path]:
    k = state_dir / "kafka"
    return {
        "dir": k,
        "data": k / "data",
        "props": k / "server.properties",
        "log4j": k / "log4j2.properties",
        "log": k / "kafka.log",
    }


def _kafka_marker(state_dir: Path) -> str:
    return f"-Dskvoz.devstack={state_dir.resolve()}"


async def _kafka_metadata(bootstrap: str) -> int:
    from aiokafka import AIOKafkaClient  # scale extra; imported late so plain installs can import us

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=3000, client_id="skvoz-devstack")
    try:
        await client.bootstrap()
        return len(client.cluster.brokers())
    finally:
        await client.close()


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def kafka_ready(bootstrap: str) -> bool:
    """True if the broker answers a metadata request listing at least one broker."""
    host, _, port = bootstrap.rpartition(":")
    if not _tcp_open(host, int(port)):  # cheap check first; aiokafka logs every refused connect
        return False
    try:
        return run_coro(lambda: _kafka_metadata(bootstrap)) > 0
    except Exception:
        return False


def _start_kafka_locked(state_dir: Path, state: dict[str, Any], timeout: float) -> None:
    k = state["kafka"]
    marker = _kafka_marker(state_dir)
    if _alive(k.get("pid"), marker):
        return
    paths = _kafka_paths(state_dir)
    java = find_java()
    libs = kafka_libs(k.get("version", KAFKA_VERSION))
    _check_port(k["port"], "the Kafka broker")
    _check_port(k["controller_port"], "the Kafka controller")
    paths["dir"].mkdir(parents=True, exist_ok=True)
    paths["props"].write_text(_server_properties(paths["data"].resolve(), k["port"], k["controller_port"]))
    paths["log4j"].write_text(_LOG4J2)
    cp = f"{libs}/*"
    jvm = [
        java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
        "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={paths['log4j'].resolve()}",
        marker, "-cp", cp,
    ]
    # Class-data sharing: the first broker that stops cleanly leaves an archive of the loaded
    # classes; later starts map it instead of parsing ~50 MB of jars (roughly 25% faster start).
    cds = libs.parent / "kafka.jsa"
    k.pop("cds_dump", None)
    if cds.exists():
        cds_flags = [f"-XX:SharedArchiveFile={cds}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    else:
        k["cds_dump"] = str(libs.parent / f"kafka.jsa.{os.getpid()}.{uuid.uuid4().hex[:6]}")
        cds_flags = [f"-XX:ArchiveClassesAtExit={k['cds_dump']}", "-Xlog:cds=off", "-Xlog:cds+dynamic=off"]
    if not (paths["data"] / "meta.properties").exists():
        # Format once; later starts reuse the log dir, which is what makes data survive restarts.
        r = subprocess.run(
            jvm + ["kafka.tools.StorageTool", "format", "-t", k["cluster_id"], "-c", str(paths["props"])],
            capture_output=True, text=True, cwd=paths["dir"],
        )
        if r.returncode != 0:
            raise DevStackError(f"kafka storage format failed:\n{(r.stdout + r.stderr)[-3000:]}")
    t0 = time.monotonic()
    with open(paths["log"], "ab") as fh:
        fh.write(f"\n===== devstack start {time.strftime('%Y-%m-%d %H:%M:%S')} =====\n".encode())
    k["pid"] = _spawn(jvm[:1] + cds_flags + jvm[1:] + ["kafka.Kafka", str(paths["props"])], paths["log"], paths["dir"])
    _write_state(state_dir, state)
    bootstrap = f"127.0.0.1:{k['port']}"
    deadline = t0 + timeout
    while True:
        if not _alive(k["pid"], marker):
            raise DevStackError(f"Kafka exited during start; tail of {paths['log']}:\n{_tail(paths['log'])}")
        if kafka_ready(bootstrap):
            break
        if time.monotonic() > deadline:
            _stop_pid(k["pid"], marker, STOP_TIMEOUT_S)
            raise DevStackError(
                f"Kafka did not answer on {bootstrap} within {timeout:.0f}s; "
                f"tail of {paths['log']}:\n{_tail(paths['log'])}"
            )
        time.sleep(0.2)
    k["started_in_s"] = round(time.monotonic() - t0, 2)
    _write_state(state_dir, state)
    _log(f"Kafka {k.get('version', KAFKA_VERSION)} up on {bootstrap} in {k['started_in_s']}s (pid {k['pid']})")


# -- Redis ---------------------------------------------------------------------------------------


def find_redis(allow_install: bool = True) -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    allowed = allow_install and os.environ.get(NO_INSTALL_ENV, "") not in ("1", "true", "yes")
    if allowed and os.geteuid() == 0 and shutil.which("apt-get"):
        _log("redis-server not found; installing Debian's redis-server with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], capture_output=True, text=True, env=env)
        if r.returncode != 0:  # a fresh machine may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, text=True, env=env)
            r = subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"], capture_output=True, text=True, env=env)
        exe = shutil.which("redis-server")
        if r.returncode == 0 and exe:
            return exe
        raise DevStackError(f"apt-get install redis-server failed:\n{(r.stdout + r.stderr)[-2000:]}")
    raise DevStackError(
        "redis-server not found on PATH; install it (Debian: sudo apt-get install -y redis-server) "
        "or point SKVOZ_REDIS_URL at a running Redis"
    )


def _redis_ping(url: str) -> bool:
    import redis  # scale extra

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _redis_marker(port: int) -> str:
    return f"127.0.0.1:{port}"  # redis-server's process title carries its bind address


def _start_redis_locked(state_dir: Path, state: dict[str, Any], allow_install: bool) -> None:
    r = state["redis"]
    if _alive(r.get("pid"), _redis_marker(r["port"])) and "redis" in _cmdline(r["pid"]):
        return
    exe = find_redis(allow_install)
    _check_port(r["port"], "Redis")
    rdir = (state_dir / "redis").resolve()
    rdir.mkdir(parents=True, exist_ok=True)
    log = rdir / "redis.log"
    argv = [
        exe, "--bind", "127.0.0.1", "--port", str(r["port"]), "--dir", str(rdir),
        "--daemonize", "no", "--protected-mode", "yes", "--appendonly", "yes",
        "--save", "", "--logfile", "", "--databases", "16",
    ]
    t0 = time.monotonic()
    r["pid"] = _spawn(argv, log, rdir)
    _write_state(state_dir, state)
    url = f"redis://127.0.0.1:{r['port']}/0"
    while not _redis_ping(url):
        if not _alive(r["pid"], "redis"):
            raise DevStackError(f"redis-server exited during start; tail of {log}:\n{_tail(log)}")
        if time.monotonic() - t0 > REDIS_START_TIMEOUT_S:
            _stop_pid(r["pid"], "redis", STOP_TIMEOUT_S)
            raise DevStackError(f"Redis did not answer PING on {url}; tail of {log}:\n{_tail(log)}")
        time.sleep(0.05)
    r["started_in_s"] = round(time.monotonic() - t0, 2)
    _write_state(state_dir, state)
    _log(f"Redis up on {url} in {r['started_in_s']}s (pid {r['pid']})")


# -- public API ----------------------------------------------------------------------------------


def settings_of(state: dict[str, Any]) -> dict[str, str]:
    return {
        "SKVOZ_KAFKA_BOOTSTRAP": f"127.0.0.1:{state['kafka']['port']}",
        "SKVOZ_REDIS_URL": f"redis://127.0.0.1:{state['redis']['port']}/0",
    }


def _new_state(state_dir: Path, kafka_port: int | None, redis_port: int | None) -> dict[str, Any]:
    state = _read_state(state_dir)
    k = state.setdefault("kafka", {})
    r = state.setdefault("redis", {})
    running_k = _alive(k.get("pid"), _kafka_marker(state_dir))
    running_r = bool(r.get("port")) and _alive(r.get("pid"), _redis_marker(r["port"]))
    if kafka_port and k.get("port") and kafka_port != k["port"]:
        if running_k:
            raise DevStackError(
                f"Kafka of {state_dir} already runs on port {k['port']}; `down` first to move it to {kafka_port}"
            )
        # The controller port is part of the formatted quorum; the client port may move.
    if redis_port and r.get("port") and redis_port != r["port"] and running_r:
        raise DevStackError(f"Redis of {state_dir} already runs on port {r['port']}; `down` first")
    if kafka_port:
        k["port"] = kafka_port
    k.setdefault("port", _free_port())
    k.setdefault("controller_port", _free_port())
    k.setdefault("cluster_id", _cluster_id())
    k.setdefault("version", KAFKA_VERSION)
    if redis_port:
        r["port"] = redis_port
    r.setdefault("port", _free_port())
    return state


def up(
    state_dir: Path, kafka_port: int | None = None, redis_port: int | None = None, *,
    timeout: float = KAFKA_START_TIMEOUT_S, allow_install: bool = True,
) -> dict[str, str]:
    """Start Kafka and Redis (if not already running) and return the SKVOZ_* settings for them."""
    state_dir = Path(state_dir)
    with _locked(state_dir):
        state = _new_state(state_dir, kafka_port, redis_port)
        # Check every port before starting anything, so a busy one leaves nothing half-up.
        if not _alive(state["kafka"].get("pid"), _kafka_marker(state_dir)):
            _check_port(state["kafka"]["port"], "the Kafka broker")
            _check_port(state["kafka"]["controller_port"], "the Kafka controller")
        if not _alive(state["redis"].get("pid"), _redis_marker(state["redis"]["port"])):
            _check_port(state["redis"]["port"], "Redis")
        _write_state(state_dir, state)
        _start_redis_locked(state_dir, state, allow_install)
        _start_kafka_locked(state_dir, state, timeout)
        return settings_of(state)


def down(state_dir: Path, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop both servers and wait until they are gone. Data stays in the state dir."""
    state_dir = Path(state_dir)
    if not (state_dir / STATE_FILE).exists():
        return
    with _locked(state_dir):
        state = _read_state(state_dir)
        k, r = state.get("kafka", {}), state.get("redis", {})
        _stop_kafka_locked(state_dir, k, timeout)
        if r.get("port"):
            _stop_pid(r.get("pid"), _redis_marker(r["port"]), timeout)
        r.pop("pid", None)
        _write_state(state_dir, state)


def status(state_dir: Path) -> dict[str, Any]:
    """What runs for this state dir: {"kafka": {...,"running": bool}, "redis": {...}, "settings": {...}}."""
    state_dir = Path(state_dir)
    state = _read_state(state_dir)
    if not state.get("kafka") or not state.get("redis"):
        return {"kafka": {"running": False}, "redis": {"running": False}, "settings": {}}
    k, r = state["kafka"], state["redis"]
    k["running"] = _alive(k.get("pid"), _kafka_marker(state_dir))
    r["running"] = _alive(r.get("pid"), _redis_marker(r["port"]))
    return {"kafka": k, "redis": r, "settings": settings_of(state)}


def _stop_kafka_locked(state_dir: Path, k: dict[str, Any], timeout: float, hard: bool = False) -> None:
    _stop_pid(k.get("pid"), _kafka_marker(state_dir), timeout, hard=hard)
    k.pop("pid", None)
    dump = k.pop("cds_dump", None)
    if dump and Path(dump).exists():
        # The JVM wrote it on exit; publish it atomically for the next starts.
        final = Path(dump).parent / "kafka.jsa"
        if final.exists():
            Path(dump).unlink(missing_ok=True)
        else:
            os.replace(dump, final)


def stop_kafka(state_dir: Path, hard: bool = False, timeout: float = STOP_TIMEOUT_S) -> None:
    """Stop the broker only; ``hard`` sends SIGKILL (a crash), otherwise a clean shutdown."""
    state_dir = Path(state_dir)
    with _locked(state_dir):
        state = _read_state(state_dir)
        k = state.get("kafka", {})
        _stop_kafka_locked(state_dir, k, timeout, hard=hard)
        if state:
            _write_state(state_dir, state)


def start_kafka(state_dir: Path, timeout: float = KAFKA_START_TIMEOUT_S) -> dict[str, str]:
    """Start the broker again on its old ports and log dir (after ``stop_kafka``)."""
    state_dir = Path(state_dir)
    with _locked(state_dir):
        state = _read_state(state_dir)
        if not state.get("kafka", {}).get("port"):
            raise DevStackError(f"no dev stack in {state_dir}; run `up` first")
        _start_kafka_locked(state_dir, state, timeout)
        return settings_of(state)


def restart_kafka(state_dir: Path, hard: bool = False, timeout: float = KAFKA_START_TIMEOUT_S) -> dict[str, str]:
    stop_kafka(state_dir, hard=hard)
    return start_kafka(state_dir, timeout=timeout)


# -- CLI -----------------------------------------------------------------------------------------


def default_state_dir() -> Path:
    return Path(os.environ.get("SKVOZ_DATA_DIR") or "./skvoz-data") / "dev"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="skvoz dev", description="Local Kafka (KRaft) + Redis for the scale-out mode."
    )
    p.add_argument("command", choices=["up", "down", "status"])
    p.add_argument("--dir", type=Path, default=None, help="state dir (default: $SKVOZ_DATA_DIR/dev)")
    p.add_argument("--kafka-port", type=int, default=None)
    p.add_argument("--redis-port", type=int, default=None)
    args = p.parse_args(argv)
    state_dir = args.dir or default_state_dir()
    try:
        if args.command == "up":
            settings = up(state_dir, args.kafka_port, args.redis_port)
            for key, value in settings.items():
                print(f"export {key}={value}")
        elif args.command == "down":
            down(state_dir)
            _log(f"stopped (data kept in {state_dir})")
        else:
            st = status(state_dir)
            print(json.dumps(st, indent=2, sort_keys=True))
            return 0 if st["kafka"].get("running") and st["redis"].get("running") else 3
    except DevStackError as e:
        print(f"skvoz dev {args.command}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

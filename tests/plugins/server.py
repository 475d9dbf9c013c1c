"""Fixtures for server tests (owned by the server area): a real `skvoz run` in a subprocess.

The subprocess holds its own chdb path under its temp data_dir, so it never clashes with the
test process's ``ch_client``. ``SkvozServer`` can be started, stopped (SIGTERM), killed
(SIGKILL) and started again on the same data_dir.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests import configs

SITE_KEY = "e2e-site-key-shop"
SITE_KEY_2 = "e2e-site-key-blog"
TOKEN = "e2e-api-token-0123456789abcdef"
PROJECT = "shop"
DOMAINS = ("shop.example.ru", "blog.example.ru")
# A browser user agent: scripts' own agents (aiohttp, curl) are dropped as bots.
BROWSER_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/124.0.0.0 Safari/537.36")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, data_dir: Path, port: int, batch_max_ms: int = 200) -> None:
    configs.write_config(path, data_dir=data_dir, port=port, project=PROJECT, token=TOKEN,
                         timezone="Europe/Moscow", sites={DOMAINS[0]: SITE_KEY, DOMAINS[1]: SITE_KEY_2},
                         pii_key="e2e-pii-key", pipeline={"batch_max_ms": batch_max_ms})


class SkvozServer:
    def __init__(self, workdir: Path, batch_max_ms: int = 200) -> None:
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.config = workdir / "skvoz.toml"
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.site_key, self.site_key_2, self.token, self.project = SITE_KEY, SITE_KEY_2, TOKEN, PROJECT
        self.domains = DOMAINS
        self.log_path = workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        write_config(self.config, self.data_dir, self.port, batch_max_ms)

    def start(self, timeout: float = 90) -> "SkvozServer":
        env = {k: v for k, v in os.environ.items() if not k.startswith("SKVOZ_")}
        env["SKVOZ_LOG_LEVEL"] = "INFO"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracker.cli", "run", "--config", str(self.config)],
            cwd=self.workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"skvoz run exited with {self.proc.returncode}:\n{self.log()}")
            if self.health() == 200:
                return self
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"skvoz run not ready in {timeout}s:\n{self.log()}")

    def health(self) -> int | None:
        try:
            with urllib.request.urlopen(self.base_url + "/healthz", timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url + "/healthz", timeout=5) as r:
            return json.loads(r.read())["runtime"]

    def wait_processed(self, timeout: float = 30) -> dict:
        """Until the runtime has written everything it was given (lag 0)."""
        deadline = time.monotonic() + timeout
        while True:
            s = self.stats()
            if "log_end" in s:  # the embedded runtime's byte offsets
                done = s.get("lag_bytes", 1) == 0 and s.get("written_offset") == s["log_end"]
            else:
                done = s.get("processed", -1) >= s.get("submitted", 0)
            if done:
                return s
            if time.monotonic() > deadline:
                raise TimeoutError(f"runtime still lagging: {s}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60, sig: int = signal.SIGTERM) -> int:
        """SIGTERM (or SIGINT) and wait: the graceful path."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"skvoz run ignored SIGTERM for {timeout}s:\n{self.log()}")
        code = self.proc.returncode
        self.proc = None
        return code

    def kill(self) -> None:
        """SIGKILL: no drain, no snapshot."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""


@pytest.fixture
def skvoz_server_factory(tmp_path_factory):
    """Make servers (not started); every one still running at the end is killed."""
    made: list[SkvozServer] = []

    def make(**kw) -> SkvozServer:
        server = SkvozServer(tmp_path_factory.mktemp("skvoz-run"), **kw)
        made.append(server)
        return server

    yield make
    for server in made:
        server.kill()


@pytest.fixture(scope="module")
def skvoz_server(tmp_path_factory):
    """One started `skvoz run` per test module; stopped with SIGTERM at the end."""
    server = SkvozServer(tmp_path_factory.mktemp("skvoz-run")).start()
    yield server
    code = server.stop()
    assert code == 0, f"skvoz run exited with {code} on SIGTERM:\n{server.log()}"

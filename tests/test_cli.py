"""`skvoz` CLI: init, migrate, config errors, env overrides, dev delegation.

Commands that open ClickHouse run as subprocesses: the test process may already hold another
chdb path (one per process)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tomllib
import types
from pathlib import Path

import pytest

from tracker import cli, config

SNIPPET_RE = re.compile(
    r'<script async src="http://127\.0\.0\.1:8080/s\.js" data-site="([A-Za-z0-9_-]+)"></script>')


def skvoz(*args: str, cwd: Path, env: dict | None = None, timeout: float = 120):
    base = {k: v for k, v in os.environ.items() if not k.startswith("SKVOZ_")}
    return subprocess.run([sys.executable, "-m", "tracker.cli", *args], cwd=cwd,
                          env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("SKVOZ_"):
            monkeypatch.delenv(k)


# -- init -----------------------------------------------------------------------------------


def test_init_writes_config_and_prints_snippet_and_token(tmp_path, capsys):
    path = tmp_path / "conf" / "skvoz.toml"
    assert cli.main(["init", "--config", str(path), "--domain", "Shop.Example.RU"]) == 0
    out = capsys.readouterr().out
    data = tomllib.loads(path.read_text())
    site = data["projects"][0]["sites"][0]
    token = data["projects"][0]["api_tokens"][0]
    assert site["domain"] == "shop.example.ru"
    assert SNIPPET_RE.search(out).group(1) == site["key"]
    assert token in out
    cfg = config.load(path, environ={})
    assert cfg.site_by_key(site["key"]) is not None
    assert cfg.project_by_token(token).id == "main"
    assert len(cfg.pii_key) >= 32


def test_init_refuses_to_overwrite(tmp_path, capsys):
    path = tmp_path / "skvoz.toml"
    assert cli.main(["init", "--config", str(path)]) == 0
    before = path.read_text()
    capsys.readouterr()
    assert cli.main(["init", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "already exists" in err and "--force" in err
    assert path.read_text() == before
    assert cli.main(["init", "--config", str(path), "--force"]) == 0
    assert path.read_text() != before  # new keys


@pytest.mark.parametrize("domain", ["bad domain", "http://x.ru/path", ""])
def test_init_rejects_bad_domain(tmp_path, capsys, domain):
    path = tmp_path / "skvoz.toml"
    assert cli.main(["init", "--config", str(path), "--domain", domain]) == 2
    assert "domain" in capsys.readouterr().err
    assert not path.exists()


def test_init_uses_skvoz_config_env(tmp_path, monkeypatch):
    path = tmp_path / "from-env.toml"
    monkeypatch.setenv("SKVOZ_CONFIG", str(path))
    assert cli.main(["init"]) == 0
    assert path.exists()


# -- config errors --------------------------------------------------------------------------

GOOD = """
data_dir = "./data"
pii_key = "k"
[[projects]]
id = "main"
[[projects.sites]]
domain = "example.com"
key = "site-key-123"
"""

CONFIG_ERRORS = [
    # (label, file text or None for a missing file, env, expected message fragment)
    ("missing file", None, {}, "no such config file"),
    ("not toml", "data_dir = [", {}, "not valid TOML"),
    ("bad currency", GOOD.replace('id = "main"', 'id = "main"\ncurrency = "XYZ"'), {},
     "unsupported currency"),
    ("bad timezone", GOOD.replace('id = "main"', 'id = "main"\ntimezone = "Mars/Base"'), {},
     "unknown timezone"),
    ("unknown key", GOOD + "\n[server]\nprot = 1\n", {}, "server.prot"),
    ("empty pii_key", GOOD.replace('pii_key = "k"', 'pii_key = ""'), {}, "pii_key"),
    ("duplicate site key", GOOD + '[[projects.sites]]\ndomain = "b.com"\nkey = "site-key-123"\n',
     {}, "used twice"),
    ("env port not a number", GOOD, {"SKVOZ_SERVER_PORT": "eighty"}, "server.port"),
    ("env projects not json", GOOD, {"SKVOZ_PROJECTS": "[{"}, "SKVOZ_PROJECTS"),
]


@pytest.mark.parametrize("command", ["run", "migrate"])
@pytest.mark.parametrize("label,text,env,fragment", CONFIG_ERRORS, ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors_exit_2(tmp_path, monkeypatch, capsys, command, label, text, env, fragment):
    path = tmp_path / "skvoz.toml"
    if text is not None:
        path.write_text(text)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # config is checked before ClickHouse is touched, so this is safe in-process
    assert cli.main([command, "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert fragment in captured.err
    assert "Traceback" not in captured.err + captured.out


def test_bad_config_in_a_subprocess_has_no_traceback(tmp_path):
    (tmp_path / "skvoz.toml").write_text("data_dir = [")
    r = skvoz("run", cwd=tmp_path)
    assert r.returncode == 2
    assert "not valid TOML" in r.stderr and "Traceback" not in r.stderr


def test_bad_usage_exit_2(tmp_path):
    r = skvoz("frobnicate", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice" in r.stderr


# -- migrate --------------------------------------------------------------------------------


def test_migrate_is_idempotent_and_env_overrides_data_dir(tmp_path):
    (tmp_path / "skvoz.toml").write_text(GOOD)
    other = tmp_path / "elsewhere"
    env = {"SKVOZ_DATA_DIR": str(other), "SKVOZ_CLICKHOUSE_DATABASE": "analytics"}
    first = skvoz("migrate", cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert "applied" in first.stdout and "0001" in first.stdout
    assert "analytics" in first.stdout and str(other) in first.stdout
    assert (other / "clickhouse").is_dir()  # the env override, not ./data
    assert not (tmp_path / "data").exists()
    second = skvoz("migrate", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert "nothing applied" in second.stdout and "0001" not in second.stdout


# -- run ------------------------------------------------------------------------------------


def test_run_on_a_busy_port_exits_2(tmp_path):
    (tmp_path / "skvoz.toml").write_text(GOOD)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = skvoz("run", "--port", str(port), cwd=tmp_path)
    assert r.returncode == 2
    assert "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_run_startup_failure_is_a_message(tmp_path):
    """data_dir is a file: ClickHouse cannot open; exit 1 with the reason, no traceback."""
    (tmp_path / "blocker").write_text("not a directory")
    (tmp_path / "skvoz.toml").write_text(GOOD.replace('"./data"', '"./blocker"'))
    r = skvoz("run", "--port", "0", cwd=tmp_path)
    assert r.returncode == 1
    assert "startup failed" in r.stderr and "Traceback" not in r.stderr


# -- dev ------------------------------------------------------------------------------------


@pytest.fixture
def fake_devstack(monkeypatch):
    calls = []

    class DevStackError(RuntimeError):
        pass

    mod = types.ModuleType("tracker.devstack")
    mod.DevStackError = DevStackError

    def up(state_dir):
        calls.append(("up", Path(state_dir)))
        return {"SKVOZ_KAFKA_BOOTSTRAP": "127.0.0.1:19092", "SKVOZ_REDIS_URL": "redis://x y"}

    def down(state_dir):
        calls.append(("down", Path(state_dir)))

    def status(state_dir):
        calls.append(("status", Path(state_dir)))
        return {"kafka": {"running": True, "port": 19092}, "redis": {"running": False},
                "settings": {"SKVOZ_KAFKA_BOOTSTRAP": "127.0.0.1:19092"}}

    mod.up, mod.down, mod.status = up, down, status
    monkeypatch.setitem(sys.modules, "tracker.devstack", mod)
    import tracker
    monkeypatch.setattr(tracker, "devstack", mod, raising=False)
    return calls, mod


def test_dev_up_prints_exports(tmp_path, monkeypatch, capsys, fake_devstack):
    calls, _ = fake_devstack
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dev", "up"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["export SKVOZ_KAFKA_BOOTSTRAP=127.0.0.1:19092",
                   "export SKVOZ_REDIS_URL='redis://x y'"]
    # no config file: data_dir defaults, state under <data_dir>/dev
    assert calls == [("up", Path("./skvoz-data") / "dev")]


def test_dev_state_dir_follows_config_and_flag(tmp_path, capsys, fake_devstack):
    calls, _ = fake_devstack
    path = tmp_path / "skvoz.toml"
    path.write_text(GOOD.replace('"./data"', f'"{tmp_path / "d"}"'))
    assert cli.main(["dev", "status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "# kafka: running (port=19092)" in out and "# redis: stopped" in out
    assert "export SKVOZ_KAFKA_BOOTSTRAP=127.0.0.1:19092" in out
    assert cli.main(["dev", "down", "--state-dir", str(tmp_path / "s")]) == 0
    assert calls == [("status", tmp_path / "d" / "dev"), ("down", tmp_path / "s")]


def test_dev_error_is_a_message(tmp_path, monkeypatch, capsys, fake_devstack):
    _, mod = fake_devstack

    def up(state_dir):
        raise mod.DevStackError("java not found")

    mod.up = up
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dev", "up"]) == 2
    assert "java not found" in capsys.readouterr().err


def test_dev_without_devstack_module(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tracker.devstack", None)
    import tracker
    monkeypatch.delattr(tracker, "devstack", raising=False)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["dev", "up"]) == 2
    assert "dev stack" in capsys.readouterr().err


# -- worker liveness probe --------------------------------------------------------------------------


def test_worker_alive_reads_the_heartbeat(tmp_path, monkeypatch, capsys):
    path = tmp_path / "skvoz.toml"
    path.write_text(GOOD)
    monkeypatch.setenv("SKVOZ_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("SKVOZ_KAFKA_BOOTSTRAP", "127.0.0.1:1")  # never contacted by --alive
    assert cli.main(["worker", "--config", str(path), "--alive"]) == 1
    assert "last heartbeat never" in capsys.readouterr().err

    beat = tmp_path / "data" / "worker" / "alive"
    beat.parent.mkdir(parents=True)
    beat.touch()
    assert cli.main(["worker", "--config", str(path), "--alive"]) == 0
    assert "alive (heartbeat 0s ago)" in capsys.readouterr().out

    old = beat.stat().st_mtime - 120
    os.utime(beat, (old, old))
    assert cli.main(["worker", "--config", str(path), "--alive", "60"]) == 1
    assert "last heartbeat 120s ago (limit 60s)" in capsys.readouterr().err

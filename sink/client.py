"""Open a ClickHouse client: embedded chdb under the data dir, or a server over HTTP(S).

Both are clickhouse-connect clients, so every other module runs the same SQL on either.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import clickhouse_connect
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import ClickHouseError

# One chdb engine per process: the sub-directory of data_dir that holds it.
CHDB_SUBDIR = "clickhouse"

IDENTIFIER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SinkConnectionError(RuntimeError):
    """ClickHouse cannot be opened or reached; the message says where and why."""


def redact(url: str) -> str:
    """The URL with its password replaced, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparseable url>"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def chdb_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / CHDB_SUBDIR


def check_identifier(name: str, what: str = "database name") -> str:
    if not isinstance(name, str) or not IDENTIFIER_RE.match(name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits and _, not starting with a digit")
    return name


def connect(url: str, data_dir: str | Path, **kw: Any) -> Client:
    """Empty ``url``: chdb at ``data_dir/clickhouse``; else an ``http(s)://[user:pass@]host[:port]`` server.

    Extra keyword arguments go to ``clickhouse_connect.get_client``.
    """
    if not url:
        return _connect_chdb(chdb_path(data_dir), **kw)
    return _connect_http(url, **kw)


def _connect_chdb(path: Path, **kw: Any) -> Client:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SinkConnectionError(f"cannot create the embedded ClickHouse directory {path}: {e}") from e
    try:
        return clickhouse_connect.get_client(interface="chdb", path=str(path), **kw)
    except ClickHouseError as e:
        # chdb hosts one data path per process; name the likely cause.
        raise SinkConnectionError(
            f"cannot open embedded ClickHouse (chdb) at {path}: {e}. "
            "A process can hold only one chdb data path at a time; close other clients first."
        ) from e


def _connect_http(url: str, **kw: Any) -> Client:
    shown = redact(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise SinkConnectionError(f"invalid ClickHouse URL {shown}: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise SinkConnectionError(
            f"invalid ClickHouse URL {shown}: the scheme must be http or https "
            "(or leave the URL empty for the embedded database)"
        )
    if not parts.hostname:
        raise SinkConnectionError(f"invalid ClickHouse URL {shown}: no host")
    # No session id: a session serialises queries, and the app queries from several threads.
    kw.setdefault("autogenerate_session_id", False)
    kw.setdefault("connect_timeout", 5)
    kw.setdefault("send_receive_timeout", 60)
    try:
        return clickhouse_connect.get_client(
            dsn=url, interface=parts.scheme, port=port or (8443 if parts.scheme == "https" else 8123), **kw
        )
    except ClickHouseError as e:
        raise SinkConnectionError(f"cannot reach ClickHouse at {shown}: {_first_line(e)}") from e
    except OSError as e:
        raise SinkConnectionError(f"cannot reach ClickHouse at {shown}: {e}") from e


_ERRNO_RE = re.compile(r"\[Errno -?\d+\] ([^'\")\]]+)")


def _first_line(e: BaseException) -> str:
    """The useful part of a driver error: urllib3 buries the OS reason in a long repr."""
    text = str(e).strip()
    if "AUTHENTICATION_FAILED" in text or "Code: 516" in text:
        return "authentication failed (check the user and password in the URL)"
    m = _ERRNO_RE.search(text)
    if m:
        return m.group(1).strip()
    if "timed out" in text.lower():
        return "connection timed out"
    line = text.splitlines()[0] if text else type(e).__name__
    return line[:300]

"""skvoz.toml files for tests and benchmarks that start real `skvoz` processes."""

from __future__ import annotations

import json
from pathlib import Path


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    return json.dumps(str(v), ensure_ascii=False)  # a TOML basic string


def write_config(path: Path, *, data_dir: Path, port: int, sites: dict[str, str], project: str,
                 token: str, timezone: str = "UTC", goals: tuple[str, ...] = ("signup",),
                 pii_key: str = "test-pii-key", **sections: dict) -> Path:
    """One project with ``sites`` ({domain: site key}) and an API token; the server on
    127.0.0.1:``port``; ``sections`` are further tables, e.g. ``kafka={"partitions": 4}``."""
    lines = [f"data_dir = {_value(data_dir)}", f"pii_key = {_value(pii_key)}"]
    for name, table in {"server": {"host": "127.0.0.1", "port": port, **sections.pop("server", {})}, **sections}.items():
        lines += ["", f"[{name}]", *(f"{k} = {_value(v)}" for k, v in table.items())]
    lines += ["", "[[projects]]", f"id = {_value(project)}", f"timezone = {_value(timezone)}",
              f"api_tokens = {_value([token])}", f"conversion_goals = {_value(goals)}"]
    for domain, key in sites.items():
        lines += ["", "[[projects.sites]]", f"domain = {_value(domain)}", f"key = {_value(key)}"]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path

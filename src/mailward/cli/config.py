"""`mailward config show`: the effective configuration as TOML, every key with its value.

Admins see what Mailward really runs with (defaults included), and the output is
itself a valid configuration file to start from.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
from collections.abc import Mapping
from typing import Any

from ..config import PolicyTable, Settings


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("config", help="configuration tools")
    sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = sub.add_parser("show", help="print the effective configuration as TOML")
    show.set_defaults(handler=run_show)


def _value(value: object) -> str:
    if isinstance(value, enum.IntEnum):
        return json.dumps(value.name.lower())
    if isinstance(value, enum.Enum):
        return json.dumps(value.value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return json.dumps(value)


def to_toml(obj: Any, prefix: str = "") -> list[str]:
    """``obj`` is a settings dataclass."""
    scalars: list[str] = []
    tables: list[tuple[str, Any]] = []
    arrays: list[tuple[str, Any]] = []
    for f in dataclasses.fields(obj):
        if f.name == "source":
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            tables.append((f.name, value))
        elif isinstance(value, Mapping):  # a direction's actions: one <category>_action key each
            scalars += [f"{key.value}_action = {_value(action)}" for key, action in value.items()]
        elif isinstance(value, tuple) and value and isinstance(value[0], PolicyTable):
            arrays.append((f.name, value))
        else:
            scalars.append(f"{f.name} = {_value(value)}")
    lines = ([f"[{prefix}]"] if prefix and scalars else []) + scalars + ([""] if scalars else [])
    for name, value in tables:
        lines += to_toml(value, f"{prefix}.{name}" if prefix else name)
    for name, policy_tables in arrays:  # [[policy.recipient]]: its match, then every key it resolves to
        for table in policy_tables:
            body = to_toml(table.policy, "x")[1:]
            lines += [f"[[{prefix}.{name}]]", f"match = {_value(table.match)}", *body]
    return lines


def run_show(args: argparse.Namespace, settings: Settings) -> int:
    print(f"# effective configuration from {settings.source}")
    print("\n".join(to_toml(settings)).rstrip())
    return 0

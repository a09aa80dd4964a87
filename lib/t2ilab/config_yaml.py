"""Reading t2ilab's YAML strictly: no duplicate keys, no aliases, YAML 1.2 floats, and `--set a.b=value` overrides.

Kept apart from the pydantic sections in config.py: this is text -> nested dict, that is dict -> validated Config.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from t2ilab.paths import resolve_path


class ConfigError(ValueError):
    """A config file or override is wrong; the message says where and what is allowed."""


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses duplicate keys and aliases (an alias can expand to gigabytes; a duplicate hides a value)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.events.AliasEvent):
            event = self.peek_event()
            raise yaml.constructor.ConstructorError(
                None, None, f"YAML alias *{event.anchor} is not allowed in t2ilab configs; write the value out",
                event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}: a second value would silently replace the first",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 floats without a dot (5e-5, 1e3): plain PyYAML (YAML 1.1) reads them as strings, which strict types refuse.
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def strict_yaml(text: str) -> Any:
    """Parse YAML like yaml.safe_load, refusing duplicate keys and aliases."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def parse_override(text: str) -> tuple[list[str], Any]:
    """'training.num_epochs=300' -> (['training', 'num_epochs'], 300); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set training.num_epochs=300")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {text!r}: empty key")
    if len(raw) > 10_000:
        raise ConfigError(f"--set {key}=...: the value is {len(raw)} characters; at most 10000")
    try:
        value = strict_yaml(raw) if raw.strip() else ""
    except yaml.constructor.ConstructorError as exc:
        raise ConfigError(f"--set {text[:80]!r}: {exc.problem}") from None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str] | None) -> dict[str, Any]:
    """Apply `a.b=value` strings onto a nested dict (a copy)."""
    out = json.loads(json.dumps(raw))
    for text in overrides or []:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {part!r} is a value, not a section")
            node = nxt
        node[path[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping with errors that name the file and line."""
    p = Path(path)
    if not p.exists():
        p = resolve_path(p)  # configs/demo.yaml from any directory: the checkout's or the installed package's copy
    if not p.exists():
        raise ConfigError(f"config file not found: {path} (pass --config configs/demo.yaml or another YAML file)")
    if not p.is_file():
        raise ConfigError(f"config {p} is not a regular file (a folder, FIFO or device); pass a YAML file")
    if p.stat().st_size > 1_000_000:
        raise ConfigError(f"config {p} is {p.stat().st_size} bytes; a t2ilab config is a few KB of YAML")
    try:
        raw = strict_yaml(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}{where}: malformed YAML ({getattr(exc, 'problem', exc)})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    return raw if raw is not None else {}

"""Command-line options made from the config dataclasses: each field once, its doc from `metadata["help"]`, so a
new field appears in `--help` without an edit of the CLI. Extra spellings come from `metadata["flags"]`, choices
from `metadata["choices"]`; a bool that defaults to True becomes `--no-<name>`."""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields


def doc(text: str, **more) -> dict:
    """A config field's metadata: its help, and any of "flags", "choices"."""
    return {"help": text, **more}


def _base(hint):
    """(the type inside Optional, whether None is allowed)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0], len(args) < len(typing.get_args(hint))
    return hint, False


def add_options(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = (),
                more_help: dict[str, str] | None = None) -> None:
    """One option per field of dataclass `cls` not in `skip`; `more_help` adds to a field's help what only the
    command knows (e.g. the kinds registered now)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        meta, kind = f.metadata, _base(hints[f.name])[0]
        default = f.default if f.default is not MISSING else None
        required = f.default is MISSING and f.default_factory is MISSING
        text = (meta.get("help", "") + (more_help or {}).get(f.name, "")).strip()
        names = [*meta.get("flags", ()), "--" + f.name.replace("_", "-")]
        kw: dict = {"dest": f.name, "help": text}
        if kind is bool:
            if default:
                parser.add_argument("--no-" + f.name.replace("_", "-"), action="store_false", **kw)
            else:
                parser.add_argument(*dict.fromkeys(names), action="store_true", **kw)
            continue
        if typing.get_origin(kind) is tuple:  # values apart or comma-separated: --ts 600 700, --ts 600,700
            kw |= {"nargs": "*", "type": str}
            default = list(default) if default is not None else None
        else:
            kw["type"] = kind if kind in (int, float) else str
        if "choices" in meta:
            kw["choices"] = [str(c) for c in meta["choices"]] if typing.get_origin(kind) is tuple else list(meta["choices"])
        if required:
            kw["required"] = True
        else:
            kw["default"] = default
            if default not in (None, [], ()) and "%(default)" not in text:
                kw["help"] = f"{text} (default: %(default)s)"
        parser.add_argument(*dict.fromkeys(names), **kw)


def from_args(cls, args: argparse.Namespace, **overrides):
    """The dataclass from parsed options: lists become tuples; an empty list for an optional tuple is None."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        if not hasattr(args, f.name):
            continue
        v = getattr(args, f.name)
        kind, optional = _base(hints[f.name])
        if isinstance(v, list):
            inner = typing.get_args(kind)[0] if typing.get_origin(kind) is tuple else str
            items = [p for item in v for p in _split(str(item)) if p]
            try:
                v = None if (not items and optional) else tuple(inner(p) if inner in (int, float) else p for p in items)
            except ValueError as e:
                raise SystemExit(f"error: --{f.name.replace('_', '-')}: {e}") from e
        values[f.name] = v
    return cls(**(values | overrides))


def _split(text: str) -> list[str]:
    """Comma-separated values, commas inside parentheses kept: "a,b(x=1, y=2)" -> ["a", "b(x=1, y=2)"]."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return [*parts, current.strip()]

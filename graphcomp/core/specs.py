"""Pass specs: `"prune(ratio=0.3,round_to=8),dfq"` or a TOML/JSON file -> configured passes.

A file holds `passes = ["fold-bn", {name = "prune", ratio = 0.3}]` (TOML) or the same
as JSON. Unknown pass names and fields are `ConfigError`s that list what exists.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import sys
import typing
from pathlib import Path
from typing import Any

from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import Pass

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

PassSpec = tuple[str, dict[str, Any]]
# Recommended order (DESIGN.md 1): compress the structure first, then quantize.
STAGE = {
    "prune": 0,
    "svd": 1,
    "equalize": 2,
    "absorb-bias": 2,
    "bias-correct": 2,
    "dfq": 2,
    "qdq": 3,
}


def parse_specs(text: str) -> list[PassSpec]:
    """Parse `name(key=value,...),name` into (name, fields) pairs."""
    specs = []
    for item in _split_top(text, ","):
        item = item.strip()
        if not item:
            continue
        if "(" in item:
            if not item.endswith(")"):
                raise ConfigError(f"bad pass spec '{item}': expected name(key=value,...)")
            name, body = item[:-1].split("(", 1)
            fields = dict(_parse_field(f) for f in _split_top(body, ",") if f.strip())
        else:
            name, fields = item, {}
        specs.append((name.strip(), fields))
    if not specs:
        raise ConfigError("no passes given; see 'graphcomp passes' for the list")
    return specs


def _split_top(text: str, sep: str) -> list[str]:
    """Split on `sep` outside brackets and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0 or quote:
        raise ConfigError(f"unbalanced brackets or quotes in '{text}'")
    parts.append(text[start:])
    return parts


def _parse_field(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"bad pass field '{text.strip()}': expected key=value")
    key, raw = (s.strip() for s in text.split("=", 1))
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw  # a bare word is a string


def read_config_file(path: str | Path, what: str = "config") -> Any:
    """The parsed content of a TOML or JSON (by suffix) file; ConfigError if unreadable."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what} ({e.strerror})") from e
    try:
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'TOML'} ({e})") from e


def load_spec_file(path: str | Path) -> list[PassSpec]:
    """Read pass specs from a TOML or JSON file."""
    path = Path(path)
    data = read_config_file(path)
    entries = data.get("passes") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{path}: expected a top-level 'passes' list")
    return [_file_entry(path, e) for e in entries]


def _file_entry(path: Path, entry: Any) -> PassSpec:
    return spec_entry(entry, str(path))


def spec_entry(entry: Any, where: str = "passes") -> PassSpec:
    """One list entry as a spec: a name, a (name, fields) pair or a table with a 'name' key."""
    if isinstance(entry, str):
        return entry.strip(), {}
    if isinstance(entry, dict) and isinstance(entry.get("name"), str):
        fields = {k: v for k, v in entry.items() if k != "name"}
        return entry["name"], fields
    if (
        isinstance(entry, tuple)
        and len(entry) == 2
        and isinstance(entry[0], str)
        and isinstance(entry[1], dict)
    ):
        return entry[0], dict(entry[1])
    raise ConfigError(f"{where}: each pass must be a name or a table with a 'name' key")


def list_specs(entries: list[Any]) -> list[PassSpec]:
    """Specs from a Python list: names (with fields: "prune(ratio=0.2)"), tables, pairs."""
    out: list[PassSpec] = []
    for entry in entries:
        if isinstance(entry, str) and ("(" in entry or "," in entry):
            out.extend(parse_specs(entry))
        else:
            out.append(spec_entry(entry))
    return out


def build_passes(specs: list[PassSpec], registry: dict[str, type[Pass]]) -> list[Pass]:
    """Instantiate each spec's pass with its config; ConfigError on unknown names/fields."""
    passes = []
    for name, fields in specs:
        if name not in registry:
            raise ConfigError(f"unknown pass '{name}'; available: {', '.join(sorted(registry))}")
        cls = registry[name]
        passes.append(cls(make_config(name, cls.config_class, fields)))
    return passes


def make_config(pass_name: str, config_class: type, fields: dict[str, Any]) -> Any:
    """Build a frozen config dataclass from user fields, with type coercion."""
    known = {f.name: f for f in dataclasses.fields(config_class)}
    unknown = sorted(set(fields) - set(known))
    if unknown:
        have = f"its fields: {', '.join(known)}" if known else "it takes no fields"
        raise ConfigError(f"pass '{pass_name}' has no field {', '.join(unknown)}; {have}")
    hints = typing.get_type_hints(config_class)
    values = {k: _coerce(pass_name, k, v, hints.get(k)) for k, v in fields.items()}
    try:
        return config_class(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"pass '{pass_name}': {e}") from e


def _coerce(pass_name: str, key: str, value: Any, hint: Any) -> Any:
    """Accept ints for floats, lists for tuples; check scalar types against the annotation."""
    if typing.get_origin(hint) in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"pass '{pass_name}': field {key} wants a list, got {value!r}")
        return tuple(value)
    allowed = typing.get_args(hint) or (hint,)
    if isinstance(value, bool) and bool not in allowed:
        raise ConfigError(f"pass '{pass_name}': field {key} does not take true/false")
    if float in allowed and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    scalars = [t for t in allowed if t in (int, float, str, bool)]
    if scalars and not isinstance(value, tuple(scalars)) and type(None) not in allowed:
        names = "/".join(t.__name__ for t in scalars)
        raise ConfigError(f"pass '{pass_name}': field {key} wants {names}, got {value!r}")
    return tuple(value) if isinstance(value, list) else value


RECOMMENDED = "prune -> svd -> dfq (or prune -> svd -> qdq with --calibration-data)"
AFTER_QUANTIZED = frozenset({"cleanup"})  # the only passes that may follow a quantizing one


def order_warnings(names: list[str]) -> list[str]:
    """Warnings when the user's order goes against prune -> svd -> dfq -> qdq."""
    staged = [(STAGE[n], n) for n in names if n in STAGE]
    return [
        f"'{b}' runs after '{a}'; the recommended order is {RECOMMENDED}"
        for (sa, a), (sb, b) in zip(staged, staged[1:], strict=False)
        if sb < sa
    ]


def check_sequence(passes: list[Pass]) -> None:
    """ConfigError, before anything runs, for a pass after one whose output is quantized.

    dfq (unless `quantize=false`) and qdq end with QuantizeLinear/DequantizeLinear;
    every pass but cleanup works on the float model only.
    """
    quantized: Pass | None = None
    for p in passes:
        if quantized is not None and p.name not in AFTER_QUANTIZED:
            raise ConfigError(
                f"'{p.name}' cannot run after '{quantized.name}', which already quantizes "
                f"the model; put quantization last: {RECOMMENDED}"
            )
        if quantized is None and p.quantizes():
            quantized = p

"""The qdq pass's configuration: global defaults and the per-tensor rule file.

Every tensor of a quantizable layer (role `input`, `weight`, `bias` or `output`)
gets a `TensorRule`: a method (`auto` = range from statistics, `fixed` = a given
scale or 2^-frac_bits, `none` = stays float), bit width (4, 8, 16), signed,
symmetric, per-channel, power-of-two scales, and for activations whether they are
quantized at run time (`dynamic`). Rules are merged, later wins:

    built-in defaults (from `QdqConfig` and the profile)
    < [default] < [default.<role>]
    < [ops.<OpType>] < [ops.<OpType>.<role>]
    < [layers."<node-name glob>"] < [layers."<glob>".<role>]   (file order)

File (TOML, or the same structure as JSON), e.g.:

    [default]
    bits = 8
    [default.weight]
    per_channel = true
    [ops.MatMul.input]
    dynamic = true
    [layers."conv1*"]
    weight = { bits = 4 }
    input = { method = "fixed", frac_bits = 5 }
    [layers."head"]
    method = "none"

Biases are int32 with scale s_input * s_weight (only `auto` or `none` apply). A tensor
that is one layer's output and another's input gets one quantizer: the first reader's
`input` rule wins over the producer's `output` rule.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from graphcomp.core import specs
from graphcomp.core.errors import ConfigError
from graphcomp.core.quant import BITS, QuantSpec
from graphcomp.measure import fields

ROLES = ("input", "weight", "bias", "output")
METHODS = ("auto", "fixed", "none")
PROFILES = ("ort", "trt")
CALIBRATION = ("minmax", "percentile", "mse")
DYNAMIC = ("auto", "on", "off")
REDUCE_RANGE = ("auto", "on", "off")
ROUNDING = ("balanced", "nearest")


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """How one tensor of one layer is quantized (see the module docstring)."""

    method: str = "auto"
    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    per_channel: bool = False
    pow2: bool = False
    scale: float | None = None
    frac_bits: int | None = None
    zero_point: int | None = None
    dynamic: bool | None = None  # None: the placement decides
    reduce_range: bool = False  # weight codes in +-64 (see QdqConfig.reduce_range)
    pairs: tuple[int, ...] = ()  # u8s8 kernel order: no same-sign pair sums over 128
    balanced: bool = False  # weights: summed rounding error per kernel/channel bounded

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.bits not in BITS:
            raise ConfigError(f"bits must be one of {BITS}, got {self.bits}")
        if self.method == "fixed" and (self.scale is None) == (self.frac_bits is None):
            raise ConfigError("method 'fixed' needs exactly one of 'scale' or 'frac_bits'")
        if self.scale is not None and not self.scale > 0:
            raise ConfigError(f"scale must be > 0, got {self.scale}")

    @property
    def enabled(self) -> bool:
        """False when the tensor stays float."""
        return self.method != "none"

    def spec(self, axis: int = 0, per_channel: bool | None = None) -> QuantSpec:
        """The quantizer of this rule (per-channel along `axis` when asked)."""
        pc = self.per_channel if per_channel is None else per_channel
        return QuantSpec(
            self.bits,
            self.signed,
            self.symmetric,
            pc,
            axis,
            self.pow2,
            self.reduce_range,
            self.pairs,
            self.balanced,
        )

    def describe(self) -> str:
        """Short text: 'int8 asym per-tensor pow2'."""
        if not self.enabled:
            return "float"
        kind = f"{'int' if self.signed else 'uint'}{self.bits}"
        parts = [
            kind,
            "sym" if self.symmetric else "asym",
            "per-channel" if self.per_channel else "per-tensor",
        ]
        parts += ["pow2"] if self.pow2 else []
        parts += ["7-bit range"] if self.reduce_range else []
        parts += ["balanced rounding"] if self.balanced else []
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class QdqConfig:
    """Options of the qdq pass; `qconfig` is a TOML/JSON file of per-tensor rules."""

    profile: str = "ort"  # ort: what onnxruntime fuses on CPU; trt: TensorRT's rules
    qconfig: str | None = None
    bits: int = 8  # default bit width of weights
    act_bits: int = 8  # default bit width of activations
    per_channel: bool = True  # weights per output channel (opset >= 13)
    pow2: bool = False  # every scale an exact power of two
    act_signed: bool | None = None  # None: profile (ort uint8 asymmetric, trt int8 sym)
    act_symmetric: bool | None = None
    calibration: str = "percentile"  # range method for measured activations
    percentile: float = 99.99
    samples: int = fields.SYNTHETIC_SAMPLES  # synthetic inputs without data or dfq ranges
    prior: str = "normal"  # their prior (graphcomp.measure.inputs): normal | smooth
    dynamic: str = "auto"  # MatMul inputs at run time: auto = in transformer graphs
    concat_ratio: float = 16.0  # Concat inputs keep own scales above this range ratio
    outlier_ratio: float = 16.0  # static transformer MatMul inputs: channel spread limit
    # x86 without VNNI sums uint8 x int8 pairs in int16 (VPMADDUBSW saturates silently)
    reduce_range: str = "auto"  # auto: no pair over 128 on u8s8 GEMMs; on: +-64; off
    # weights: balanced (each kernel's and channel's rounding errors sum to about half a
    # code at most, SQuant's CASE: graphcomp/core/quant.py) or nearest
    rounding: str = "balanced"
    seed: int = 0
    fold_bn: bool = True  # fold BatchNormalization first (as onnxruntime's pre-processing)
    fidelity: float | None = None  # output SNR target (dB): the worst tensors stay float
    probe_samples: int = 4  # inputs of the sensitivity probe (passes/qdq/sense.py)

    def __post_init__(self) -> None:
        checks = [
            (self.profile, PROFILES, "profile"),
            (self.calibration, CALIBRATION, "calibration"),
            (self.dynamic, DYNAMIC, "dynamic"),
            (self.reduce_range, REDUCE_RANGE, "reduce_range"),
            (self.rounding, ROUNDING, "rounding"),
        ]
        for value, allowed, name in checks:
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
        for bits in (self.bits, self.act_bits):
            if bits not in BITS:
                raise ConfigError(f"bits must be one of {BITS}, got {bits}")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.concat_ratio < 1.0 or self.outlier_ratio < 1.0:
            raise ConfigError("concat_ratio and outlier_ratio must be >= 1")
        check_fidelity(self)
        fields.check(self)

    def builtin(self, role: str) -> dict[str, Any]:
        """The built-in rule fields of `role` before any file applies."""
        if role == "weight":
            return {
                "bits": self.bits,
                "signed": True,
                "symmetric": True,
                "per_channel": self.per_channel,
                "pow2": self.pow2,
            }
        if role == "bias":  # TensorRT fuses float biases itself
            return {"method": "none"} if self.profile == "trt" else {}
        trt = self.profile == "trt"
        signed = trt if self.act_signed is None else self.act_signed
        symmetric = trt if self.act_symmetric is None else self.act_symmetric
        return {
            "bits": self.act_bits,
            "signed": signed,
            "symmetric": symmetric,
            "per_channel": False,
            "pow2": self.pow2,
        }


def check_fidelity(config: Any) -> None:
    """`fidelity`: a finite output SNR in dB, or None (also spelled none / off): no probe."""
    value = config.fidelity
    if isinstance(value, str) and value.lower() in ("none", "off"):
        object.__setattr__(config, "fidelity", None)
        return
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise ConfigError(f"fidelity must be an output SNR in dB or none, got {value!r}")
    object.__setattr__(config, "fidelity", float(value))


RULE_KEYS = frozenset(f.name for f in dataclasses.fields(TensorRule))


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One section of the file: a selector and its fields for all roles / per role."""

    kind: str  # default, op, layer
    pattern: str
    common: dict[str, Any]
    roles: dict[str, dict[str, Any]]

    def selects(self, layer: str, op: str) -> bool:
        if self.kind == "default":
            return True
        if self.kind == "op":
            return self.pattern == op
        return fnmatch.fnmatchcase(layer, self.pattern)


class RuleBook:
    """Resolves the rule of (layer, op, role) from a `QdqConfig` and its rule file."""

    def __init__(self, config: QdqConfig) -> None:
        self.config = config
        self.entries = load_rules(config.qconfig) if config.qconfig else []

    def rule(self, layer: str, op: str, role: str) -> TensorRule:
        """The merged rule; ConfigError when the merged fields are invalid."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles: {ROLES}")
        fields = dict(self.config.builtin(role))
        for entry in self.entries:
            if entry.selects(layer, op):
                fields.update(entry.common)
                fields.update(entry.roles.get(role, {}))
        if role == "bias":
            fields = {"method": fields.get("method", "auto")}
            if fields["method"] == "fixed":
                raise ConfigError(
                    f"{layer}: bias takes method 'auto' or 'none' (its scale is s_input * s_weight)"
                )
        try:
            return TensorRule(**fields)
        except ConfigError as e:
            raise ConfigError(f"{layer} {role}: {e}") from e


def load_rules(path: str | Path) -> list[_Entry]:
    """Parse a rule file into ordered entries; ConfigError on anything unknown."""
    path = Path(path)
    data = specs.read_config_file(path, "quantization config")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table with default, ops, layers")
    unknown = sorted(set(data) - {"default", "ops", "layers"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {unknown}; use default, ops, layers")
    entries = [_entry(path, "default", "*", data.get("default", {}))]
    entries += [_entry(path, "op", k, v) for k, v in _table(path, data, "ops").items()]
    entries += [_entry(path, "layer", k, v) for k, v in _table(path, data, "layers").items()]
    return entries


def _table(path: Path, data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: '{key}' must be a table")
    return value


def _entry(path: Path, kind: str, pattern: str, body: Any) -> _Entry:
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: section {kind} {pattern!r} must be a table")
    common, roles = {}, {}
    for key, value in body.items():
        if key in ROLES:
            if not isinstance(value, dict):
                raise ConfigError(f"{path}: {pattern!r}.{key} must be a table")
            roles[key] = _fields(path, f"{pattern}.{key}", value)
        else:
            common.update(_fields(path, pattern, {key: value}))
    return _Entry(kind, pattern, common, roles)


def _fields(path: Path, where: str, values: dict[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(values) - RULE_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: {where}: unknown key(s) {unknown}; "
            f"keys: {sorted(RULE_KEYS)} or a role {ROLES}"
        )
    out = dict(values)
    if "scale" in out and isinstance(out["scale"], int):
        out["scale"] = float(out["scale"])
    return out

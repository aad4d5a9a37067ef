"""specs: pass spec strings and files become configured passes, or a clear ConfigError."""

from __future__ import annotations

import dataclasses

import pytest

from graphcomp.core import specs
from graphcomp.core.errors import ConfigError
from graphcomp.core.pass_base import Pass


@dataclasses.dataclass(frozen=True)
class _Cfg:
    ratio: float = 0.5
    round_to: int = 8
    mode: str = "auto"
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 0 < self.ratio < 1:
            raise ConfigError(f"ratio must be in (0, 1), got {self.ratio}")


class _Demo(Pass):
    name = "demo"
    config_class = _Cfg


REGISTRY = {"demo": _Demo}


def test_parse_specs_reads_names_and_typed_fields():
    parsed = specs.parse_specs("demo(ratio=0.3, mode=channel, exclude=['a*', 'b']),demo")
    assert parsed == [
        ("demo", {"ratio": 0.3, "mode": "channel", "exclude": ["a*", "b"]}),
        ("demo", {}),
    ]


def test_build_passes_coerces_ints_to_floats_and_lists_to_tuples():
    (p,) = specs.build_passes([("demo", {"ratio": 1e-1, "exclude": ["x"]})], REGISTRY)
    assert p.config == _Cfg(ratio=0.1, exclude=("x",))
    (q,) = specs.build_passes(specs.parse_specs("demo(round_to=16)"), REGISTRY)
    assert q.config.round_to == 16


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "unknown pass 'nope'; available: demo"),
        ("demo(size=3)", "has no field size; its fields: ratio, round_to, mode, exclude"),
        ("demo(ratio=2)", "ratio must be in (0, 1)"),
        ("demo(ratio=true)", "does not take true/false"),
        ("demo(round_to=abc)", "wants int"),
        ("demo(ratio=0.3", "unbalanced"),
        ("demo(ratio)", "expected key=value"),
        ("", "no passes given"),
    ],
)
def test_bad_specs_are_config_errors(text, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        specs.build_passes(specs.parse_specs(text), REGISTRY)


def test_spec_files_in_toml_and_json(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text('passes = ["demo", { name = "demo", ratio = 0.25 }]\n')
    js = tmp_path / "p.json"
    js.write_text('{"passes": ["demo", {"name": "demo", "ratio": 0.25}]}')
    expected = [("demo", {}), ("demo", {"ratio": 0.25})]
    assert specs.load_spec_file(toml) == expected
    assert specs.load_spec_file(js) == expected


def test_bad_spec_files_are_config_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("passes = [")
    with pytest.raises(ConfigError, match="not valid toml"):
        specs.load_spec_file(bad)
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"steps": []}')
    with pytest.raises(ConfigError, match="top-level 'passes' list"):
        specs.load_spec_file(wrong)
    with pytest.raises(ConfigError, match="cannot read"):
        specs.load_spec_file(tmp_path / "missing.toml")


def test_order_warnings_flag_quantize_before_prune():
    assert specs.order_warnings(["prune", "svd", "dfq", "qdq"]) == []
    assert specs.order_warnings(["fold-bn", "dfq", "prune"]) == [
        "'prune' runs before 'dfq'; the recommended order is prune, svd, dfq, qdq"
    ]

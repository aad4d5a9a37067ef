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
    assert specs.order_warnings(["prune", "svd", "dfq"]) == []
    assert specs.order_warnings(["prune", "svd", "qdq"]) == []
    assert specs.order_warnings(["equalize", "prune"]) == [
        "'prune' runs after 'equalize'; the recommended order is prune -> svd -> dfq "
        "(or prune -> svd -> qdq with --calibration-data)"
    ]


def _passes(text: str) -> list[Pass]:
    from graphcomp.passes import REGISTRY

    return specs.build_passes(specs.parse_specs(text), REGISTRY)


@pytest.mark.parametrize(
    ("text", "first"),
    [
        ("dfq,qdq", "qdq"),
        ("dfq,prune,svd,qdq", "prune"),
        ("qdq,svd", "svd"),
        ("qdq,cleanup,dfq", "dfq"),
        ("dfq,equalize", "equalize"),
    ],
)
def test_sequence_after_a_quantizing_pass_is_refused_in_one_line(text, first):
    with pytest.raises(ConfigError) as info:
        specs.check_sequence(_passes(text))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"'{first}' cannot run after")
    assert "prune -> svd -> dfq" in message


@pytest.mark.parametrize(
    "text", ["prune,svd,dfq", "prune,svd,qdq", "dfq,cleanup", "dfq(quantize=false),qdq", "cleanup"]
)
def test_sequences_that_work_are_accepted(text):
    specs.check_sequence(_passes(text))


def test_list_specs_accept_names_tables_pairs_and_fields():
    got = specs.list_specs(["fold-bn", {"name": "prune", "ratio": 0.2}, ("svd", {}), "qdq(bits=8)"])
    assert got == [("fold-bn", {}), ("prune", {"ratio": 0.2}), ("svd", {}), ("qdq", {"bits": 8})]
    with pytest.raises(ConfigError, match="a table with a 'name' key"):
        specs.list_specs([{"ratio": 0.2}])

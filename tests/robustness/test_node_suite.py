"""The onnx backend node cases through every pass list: no crash, no wrong or invalid model.

The fast test runs the cases that broke before (strings, several outputs, NaN/inf
outputs, float16/double attention, Scan, affine_grid, empty tensors); the slow one runs
every case onnxruntime runs and matches (`python scripts/node_suite.py` prints the same).
"""

from __future__ import annotations

import functools
from collections import Counter

import pytest

from tests.robustness import node_cases

REPRESENTATIVE = (
    "test_equal_string",
    "test_string_concat_zero_dimensional",
    "test_string_split_empty_tensor",
    "test_regex_full_match_basic",
    "test_attention_4d_with_qk_matmul_expanded",
    "test_attention_4d_with_past_and_present_expanded",
    "test_attention_3d_with_past_and_present_qk_matmul_bias_expanded",
    "test_sce_none_log_prob_expanded",
    "test_mod_float_edge_cases_fmod_0_float32",
    "test_reduce_max_empty_set",
    "test_reduce_log_sum_exp_empty_set_expanded",
    "test_attention_4d_fp16_expanded",
    "test_attention_local_window_ext_cache_float16_mask_expanded",
    "test_flexattention_double_expanded_ver26",
    "test_scan_sum",
    "test_affine_grid_2d_expanded",
    "test_ai_onnx_ml_binarizer",
    "test_conv_with_strides_padding",
    "test_gemm_default_single_elem_vector_bias",
    "test_batchnorm_example",
)
LOSSLESS = {"cleanup", "fold-bn", "equalize"}


@functools.cache
def _cases() -> dict[str, object]:
    return {c.name: c for c in node_cases.cases()}


def _check(outcomes: dict[str, dict[str, tuple[str, str]]]) -> None:
    bad = [
        (case, spec, kind, message)
        for case, per in outcomes.items()
        for spec, (kind, message) in per.items()
        if kind in ("crash", "invalid", "refused-multiline")
        or (kind == "failed" and spec in LOSSLESS)
    ]
    assert not bad, bad[:10]


def _run(names, tmp_path) -> dict[str, dict[str, tuple[str, str]]]:
    outcomes = {}
    for name in names:
        case = _cases()[name]
        inputs, outputs = case.data_sets[0]
        if not node_cases.ort_matches(case.model, list(inputs), list(outputs)):
            continue
        folder = tmp_path / name
        folder.mkdir()
        outcomes[name] = node_cases.run_case(case, node_cases.DEFAULT_PASS_LISTS, folder)
    return outcomes


def test_representative_node_cases_never_crash_or_break(tmp_path):
    outcomes = _run([n for n in REPRESENTATIVE if n in _cases()], tmp_path)
    assert len(outcomes) >= 15
    _check(outcomes)
    assert outcomes["test_equal_string"]["cleanup"] == ("ok", "")
    assert outcomes["test_attention_4d_with_qk_matmul_expanded"]["cleanup"] == ("ok", "")
    assert outcomes["test_scan_sum"]["qdq"] == ("ok", "")
    kind, message = outcomes["test_affine_grid_2d_expanded"]["dfq"]
    assert kind in ("ok", "refused") and (kind == "ok" or "--input-shape" in message)
    kind, message = outcomes["test_conv_with_strides_padding"]["dfq,prune,svd,qdq"]
    assert kind == "refused" and message.startswith("'prune' cannot run after 'dfq'")


@pytest.mark.slow
def test_every_node_case_onnxruntime_runs(tmp_path):
    chosen, _ = node_cases.runnable_cases()
    outcomes = {}
    for case in chosen:
        folder = tmp_path / case.name
        folder.mkdir()
        outcomes[case.name] = node_cases.run_case(case, node_cases.DEFAULT_PASS_LISTS, folder)
    counts = {
        spec: Counter(per[spec][0] for per in outcomes.values())
        for spec in node_cases.DEFAULT_PASS_LISTS
    }
    assert len(outcomes) > 1000, counts
    _check(outcomes)

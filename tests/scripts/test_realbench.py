"""scripts/realbench.py: its metric functions and its split rules, without any wheel.

The benchmark's numbers are only as good as these pure functions (CTC decode, edit
distance, box matching, cosine, decision and top-1 agreement, top-k overlap, mean
pooling, the photo views and their preprocessing) and the promise that the tuning and
evaluation splits share no sentence, font, voice or photo.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "realbench.py"


def _load():
    spec = importlib.util.spec_from_file_location("realbench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["realbench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


rb = _load()


def one_hot(ids, classes=5):
    out = np.zeros((len(ids), classes), np.float32)
    out[np.arange(len(ids)), ids] = 1.0
    return out


def test_ctc_greedy_merges_repeats_and_drops_blanks():
    assert rb.ctc_greedy(one_hot([0, 1, 1, 0, 1, 2, 2, 0, 0, 3])) == [1, 1, 2, 3]
    assert rb.ctc_greedy(one_hot([0, 0, 0])) == []
    assert rb.ctc_greedy(one_hot([4, 4, 2, 2], classes=5), blank=2) == [4]


@pytest.mark.parametrize(
    ("a", "b", "dist"),
    [
        ("kitten", "sitting", 3),
        ("", "abc", 3),
        ("abc", "", 3),
        ("same", "same", 0),
        ("ab", "ba", 2),
    ],
)
def test_edit_distance_is_levenshtein(a, b, dist):
    assert rb.edit_distance(a, b) == dist
    assert rb.edit_distance(b, a) == dist


def test_char_agreement_bounds():
    assert rb.char_agreement("hello", "hello") == 1.0
    assert rb.char_agreement("hello", "hallo") == pytest.approx(0.8)
    assert rb.char_agreement("ab", "xxxxxxxx") == 0.0  # floored, never negative
    assert rb.char_agreement("", "") == 1.0
    assert rb.char_agreement("", "a") == 0.0
    assert rb.char_agreement([3, 4, 5], [3, 5]) == pytest.approx(2 / 3)  # token ids too


def quad(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)


def test_box_iou_of_rectangles():
    assert rb.box_iou(quad(0, 0, 10, 10), quad(0, 0, 10, 10)) == pytest.approx(1.0)
    assert rb.box_iou(quad(0, 0, 10, 10), quad(5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert rb.box_iou(quad(0, 0, 10, 10), quad(20, 20, 30, 30)) == 0.0


def test_box_f1_matches_one_to_one():
    ref = [quad(0, 0, 100, 20), quad(0, 40, 100, 60)]
    assert rb.box_f1(ref, ref) == 1.0
    assert rb.box_f1(ref, [quad(1, 1, 99, 21)]) == pytest.approx(2 / 3)  # 1 match, 2 + 1 boxes
    # two detections on one float box: only one may match it
    assert rb.box_f1(ref[:1], [quad(0, 0, 100, 20), quad(2, 0, 100, 20)]) == pytest.approx(2 / 3)
    assert rb.box_f1(ref, [quad(0, 0, 30, 20)]) == 0.0  # IoU 0.3 < 0.5
    assert rb.box_f1([], []) == 1.0
    assert rb.box_f1(ref, []) == 0.0 and rb.box_f1([], ref) == 0.0


def test_cosine():
    x = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert rb.cosine(x, 2 * x) == pytest.approx(1.0)
    assert rb.cosine(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(0.0)
    assert rb.cosine(np.array([1.0, 1.0]), np.array([-1.0, -1.0])) == pytest.approx(-1.0)
    assert rb.cosine(np.zeros(3), np.zeros(3)) == 1.0
    assert rb.cosine(np.zeros(3), np.ones(3)) == 0.0


def test_decision_agreement_at_threshold():
    ref = np.array([0.1, 0.6, 0.9, 0.4])
    assert rb.decision_agreement(ref, ref, 0.5) == 1.0
    assert rb.decision_agreement(ref, np.array([0.2, 0.4, 0.8, 0.45]), 0.5) == pytest.approx(0.75)
    assert rb.decision_agreement(ref, 1 - ref, 0.5) == 0.0


def test_top1_agreement_over_rows():
    ref = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    hyp = np.array([[0.2, 0.8], [0.4, 0.6], [0.1, 0.9]])
    assert rb.top1_agreement(ref, hyp) == pytest.approx(2 / 3)
    assert rb.top1_agreement(ref, ref) == 1.0


def test_mean_pool_ignores_masked_tokens():
    hidden = np.array([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = np.array([[1, 1, 0]])
    np.testing.assert_allclose(rb.mean_pool(hidden, mask), [[2.0, 3.0]])


def test_text_lines_cut_at_words_within_limit():
    lines = rb.text_lines(["one two three four five six seven"], max_chars=10)
    assert lines == ["one two", "three four", "five six", "seven"]
    assert all(len(line) <= 36 for line in rb.text_lines(rb.SENTENCES))


def test_splits_share_no_sentence_font_or_voice():
    tune, evals = rb.sentence_split("tune"), rb.sentence_split("eval")
    assert len(tune) >= 40 and len(evals) >= 60
    assert not set(tune) & set(evals)
    assert len(set(rb.SENTENCES)) == len(rb.SENTENCES)  # no sentence written twice
    assert not set(rb.text_lines(tune)) & set(rb.text_lines(evals))
    assert not set(rb.font_split("tune")) & set(rb.font_split("eval"))
    assert not set(rb.TUNE_VOICES) & set(rb.EVAL_VOICES)
    with pytest.raises(ValueError, match="split"):
        rb.sentence_split("train")


def test_line_counts_cover_the_split_sizes():
    assert len(rb.text_lines(rb.sentence_split("tune"))) >= rb.N_TUNE
    assert len(rb.text_lines(rb.sentence_split("eval"))) >= rb.N_EVAL


def test_spread_keeps_ends_and_count():
    items = list(range(100))
    picked = rb.spread(items, 5)
    assert len(picked) == 5 and picked[0] == 0 and picked[-1] == 99
    assert rb.spread(items[:3], 5) == [0, 1, 2]


def test_table_marks_failed_rows():
    fam = rb.Family("m", Path("m.onnx"), "agreement", [], [], list, lambda a, b: (1.0, ""), {})
    rows = [
        rb.Row("m", "float", 1.0, "", 1.5, 1.0),
        rb.Row("m", "gc-qdq", result="CRASH KeyError: 'x'"),
    ]
    text = rb.table(rows, {"m": fam})
    assert "| m | float | agreement | 1.0000 |" in text
    assert "| m | gc-qdq | agreement | - |" in text and "CRASH KeyError" in text


def test_extra_graphcomp_rows_parse_and_reject_taken_names():
    assert rb.parse_extra(["pt=dfq(per_channel=false)", " q = qdq "]) == {
        "pt": "dfq(per_channel=false)",
        "q": "qdq",
    }
    for bad in (["dfq"], ["=dfq"], ["x="], ["dfq=dfq"], ["a=dfq", "a=qdq"]):
        with pytest.raises(ValueError, match="NAME=SPEC"):
            rb.parse_extra(bad)


def test_scored_split_defaults_to_evaluation():
    assert rb.scored_split() == "eval"
    assert rb.SPLITS == {"evaluation": "eval", "tuning": "tune"}


def test_photo_splits_share_no_photo():
    tune, evals = rb.photo_split("tune"), rb.photo_split("eval")
    assert len(tune) >= 8 and len(evals) >= 8
    assert not set(tune) & set(evals)
    names = [Path(rel).stem for _, rel in tune + evals]
    assert len(set(names)) == len(names)  # one file name once: pywt's camera is skimage's
    assert not {"motorcycle_right", "motorcycle_left"} <= set(names)  # one stereo pair
    with pytest.raises(ValueError, match="split"):
        rb.photo_split("train")


def test_view_boxes_stay_inside_the_photo():
    views = rb.view_boxes(300, 200, 32, np.random.default_rng(0))
    assert len(views) == 32 and views[0] == (0, 0, 300, 200, False)
    for left, top, right, bottom, _ in views:
        assert 0 <= left < right <= 300 and 0 <= top < bottom <= 200
        assert (right - left) * (bottom - top) >= 0.25 * 300 * 200
    assert sum(flip for *_, flip in views) == 16  # every other view mirrored
    assert views == rb.view_boxes(300, 200, 32, np.random.default_rng(0))


def test_imagenet_preprocess_resizes_crops_and_normalizes():
    pytest.importorskip("PIL")  # the benchmark's own dependency, not graphcomp's
    from PIL import Image

    x = rb.imagenet_preprocess(Image.new("RGB", (640, 300), (128, 64, 255)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    want = (np.array([128, 64, 255]) / 255 - rb.IMAGENET_MEAN) / rb.IMAGENET_STD
    np.testing.assert_allclose(x.mean(axis=(1, 2)), want, atol=1e-5)


def test_load_photo_reads_npz_data(tmp_path):
    pytest.importorskip("PIL")
    path = tmp_path / "img.npz"
    np.savez(path, data=np.full((20, 30), 7, np.uint8))
    img = rb.load_photo(path)
    assert img.size == (30, 20) and img.mode == "RGB"
    assert np.asarray(img)[0, 0].tolist() == [7, 7, 7]


def test_topk_overlap():
    ref = np.array([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert rb.topk_overlap(ref, ref) == 1.0
    assert rb.topk_overlap(ref, -ref) == pytest.approx(0.8)  # 6 classes: top-5s share 4
    assert rb.topk_overlap(ref, ref[:, ::-1], k=1) == 0.0


def test_captcha_texts_differ_between_splits():
    tune, evals = rb.captcha_texts("tune"), rb.captcha_texts("eval")
    assert len(tune) == rb.N_CAPTCHA_TUNE and len(evals) == rb.N_CAPTCHA_EVAL
    assert not set(tune) & set(evals)
    assert all(4 <= len(t) <= 6 and set(t) <= set(rb.CAPTCHA_CHARS) for t in tune + evals)
    assert tune == rb.captcha_texts("tune")  # seeded
    with pytest.raises(ValueError, match="split"):
        rb.captcha_texts("train")


def test_render_captcha_is_an_rgb_image_sized_to_the_text():
    pytest.importorskip("PIL")
    img = rb.render_captcha("a1B2c", rb.font_split("tune")[0], np.random.default_rng(0))
    assert img.mode == "RGB" and 40 <= img.size[1] < 60
    assert img.size[0] >= 5 * img.size[1] * 0.62
    assert np.asarray(img).std() > 10  # something was drawn


def test_scene_layout_tiles_the_canvas():
    rng = np.random.default_rng(3)
    for _ in range(20):
        (w, h), cells = rb.scene_layout(rng, 5)
        assert 480 <= w <= 960 and 480 <= h <= 960 and len(cells) in (1, 4)
        assert all(0 <= i < 5 for i, _ in cells)
        assert sum((x1 - x0) * (y1 - y0) for _, (x0, y0, x1, y1) in cells) == w * h
        assert all(0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h for _, (x0, y0, x1, y1) in cells)


def test_render_scene_is_bgr_of_the_layout_size():
    pytest.importorskip("PIL")
    from PIL import Image

    photos = [Image.new("RGB", (300, 200), (255, 0, 0)), Image.new("RGB", (250, 400), (255, 0, 0))]
    scene = rb.render_scene(photos, np.random.default_rng(4))
    assert scene.dtype == np.uint8 and scene.ndim == 3 and scene.shape[2] == 3
    assert 480 <= scene.shape[0] <= 960 and 480 <= scene.shape[1] <= 960
    assert (scene[..., 2] == 255).all() and (scene[..., 0] == 0).all()  # red in BGR


def box(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y1]], np.float32)


def test_detection_f1_pools_images_and_needs_the_class():
    a, b = box(0, 0, 10, 10), box(20, 20, 40, 40)
    assert rb.detection_f1([[(0, a)], []], [[(0, a)], []]) == 1.0
    assert rb.detection_f1([[(0, a)]], [[(1, a)]]) == 0.0  # same box, other class
    # image 1: 2 float boxes, 1 found; image 2: nothing anywhere (does not count)
    assert rb.detection_f1([[(0, a), (1, b)], []], [[(0, a)], []]) == pytest.approx(2 / 3)
    # pooled, not averaged: 1 of 1 on image 1, 0 of 3 on image 2 -> 2 * 1 / (1 + 1 + 3)
    ref = [[(0, a)], [(0, a), (0, b), (1, b)]]
    assert rb.detection_f1(ref, [[(0, a)], []]) == pytest.approx(2 / 5)
    assert rb.detection_f1([[], []], [[], []]) == 1.0


def test_stack_feeds_pads_short_sentences_with_mask_zero():
    short = {"ids": np.array([[101, 7, 102]]), "mask": np.ones((1, 3), np.int64)}
    long = {"ids": np.array([[101, 7, 8, 9, 102]]), "mask": np.ones((1, 5), np.int64)}
    out = rb.stack_feeds([short, long])
    assert out["ids"].shape == (2, 5)
    np.testing.assert_array_equal(out["ids"][0], [101, 7, 102, 0, 0])
    np.testing.assert_array_equal(out["mask"][0], [1, 1, 1, 0, 0])
    np.testing.assert_array_equal(out["mask"][1], [1] * 5)


def test_stack_feeds_concatenates_equal_shapes():
    feeds = [{"input": np.full((1, 3, 2, 2), float(i), np.float32)} for i in range(3)]
    out = rb.stack_feeds(feeds)
    assert out["input"].shape == (3, 3, 2, 2)
    assert out["input"].dtype == np.float32
    np.testing.assert_array_equal(out["input"][:, 0, 0, 0], [0.0, 1.0, 2.0])

"""precision = "auto" on a CPU is timed with the bundle's own network, once per machine and architecture,
and never picks a precision slower than float32."""

import json
import os

import pytest

from genreclf.ml.autoprecision import MARGIN, MODE_ENV, candidates, choose, label, measuring, pick, pick_with

pytestmark = pytest.mark.pure  # TensorFlow in subprocesses only, no Spark

FP32_OFF, FP32_ON, BF16 = label("float32", False), label("float32", True), label("bfloat16", True)


@pytest.mark.parametrize("timings, expected", [
    ({FP32_OFF: 1.0, FP32_ON: 3.0, BF16: 1.0 - MARGIN / 2}, ("float32", False)),  # not faster by the margin
    ({FP32_OFF: 1.0, FP32_ON: 3.0, BF16: 0.5}, ("bfloat16", True)),
    ({FP32_OFF: 3.0, FP32_ON: 1.0, BF16: 0.98}, ("float32", True)),  # musicnn's float32 with oneDNN
    ({FP32_OFF: 1.0, FP32_ON: 0.9}, ("float32", True)),  # no native bfloat16: not timed
])
def test_the_choice_is_the_fastest_float32_unless_bfloat16_beats_it_by_the_margin(timings, expected):
    assert pick(timings) == expected


def test_bfloat16_is_a_candidate_only_where_the_cpu_computes_it():
    assert candidates(False) == [("float32", False), ("float32", True)]
    assert candidates(True) == [("float32", False), ("float32", True), ("bfloat16", True)]


def test_a_worker_whose_onednn_is_fixed_takes_the_best_candidate_with_it():
    timings = {FP32_OFF: 1.0, FP32_ON: 3.0, BF16: 0.5}
    assert pick_with(timings, False) == ("float32", False) and pick_with(timings, True) == ("bfloat16", True)


def test_a_wrong_mode_is_refused_naming_the_variable(monkeypatch):
    monkeypatch.setenv(MODE_ENV, "fastest")
    with pytest.raises(ValueError, match=f"{MODE_ENV}='fastest': use 'measure'"):
        measuring()


@pytest.fixture(scope="module")
def reference_bundle(tmp_path_factory):
    import keras

    from genreclf.config import Recipe
    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.ml.network import build_model

    root = tmp_path_factory.mktemp("auto") / "bundle"
    root.mkdir()
    keras.utils.set_random_seed(0)
    build_model((Recipe().frames, Recipe().bands, 1), 3, training=False).save(str(root / MODEL_FILE))
    write_json(str(root / BUNDLE_FILE), bundle_info(["a", "b", "c"], Recipe()))
    return str(root), str(root / MODEL_FILE)


def test_auto_is_timed_once_per_machine_and_network_then_read(reference_bundle, tmp_path, monkeypatch):
    """Each candidate timed in a fresh process with the bundle's network (float32 with oneDNN off and on:
    bfloat16's place in the choice is pinned above); the second worker reads the file and times nothing."""
    bundle, model = reference_bundle
    monkeypatch.setenv(MODE_ENV, "measure")
    monkeypatch.setenv("GENRECLF_CACHE_DIR", str(tmp_path / "cache"))
    first = choose(bundle, model, 1, cpu_bf16=False, cpu="a test CPU", batch=2)
    assert first.source == "measured" and set(first.timings) == {FP32_OFF, FP32_ON}
    assert all(t > 0 for t in first.timings.values())
    fastest_fp32 = min(first.timings[FP32_OFF], first.timings[FP32_ON])
    assert first.timings[label(first.precision, first.onednn)] == fastest_fp32
    (cached,) = [f for f in os.listdir(tmp_path / "cache") if f.endswith(".json")]
    assert json.loads((tmp_path / "cache" / cached).read_text())["cpu"] == "a test CPU"
    again = choose(bundle, model, 1, cpu_bf16=False, cpu="a test CPU", batch=2)
    assert again.source == "cached" and (again.precision, again.onednn, again.timings) == (
        first.precision, first.onednn, first.timings)


def test_a_cache_directory_it_cannot_write_falls_back_to_the_flags_with_one_warning(reference_bundle, tmp_path,
                                                                                   monkeypatch, caplog):
    bundle, model = reference_bundle
    blocked = tmp_path / "a-file"
    blocked.write_text("not a directory")
    monkeypatch.setenv("GENRECLF_CACHE_DIR", str(blocked / "cache"))
    assert choose(bundle, model, 1, cpu_bf16=True, cpu="a test CPU", batch=2) is None
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "deciding by CPU flags" in warning and "GENRECLF_CACHE_DIR" in warning

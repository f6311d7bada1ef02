"""The trainer: the reference architecture pinned, a tiny end-to-end train through real petastorm
and tf.data, a bundle that reloads to identical predictions, and evaluation that agrees with it."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from genreclf.config import Recipe
from genreclf.errors import ConfigError
from genreclf.formats.bundle import check_recipe, load_bundle_info
from tests.corpus import LABELLED_TRAINING
from tests.spies import resolutions

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_reference_architecture_and_optimizer():
    import keras

    from genreclf.ml.network import build_model, compile_model

    model = compile_model(build_model((128, 513, 1), 16))
    assert model.count_params() == 2_186_468  # the reference's ~2.19 M
    convs = [l for l in model.layers if isinstance(l, keras.layers.Conv2D)]
    assert [c.kernel_size for c in convs] == [(4, 513)] + [(4, 1)] * 4
    assert [c.filters for c in convs] == [256] * 5
    assert [c.padding for c in convs] == ["valid"] + ["same"] * 4
    assert isinstance(model.layers[1], keras.layers.BatchNormalization)
    pools = [l for l in model.layers if isinstance(l, (keras.layers.AveragePooling2D, keras.layers.MaxPooling2D))]
    assert sorted(type(p).__name__ for p in pools) == ["AveragePooling2D", "MaxPooling2D"]
    assert all(p.pool_size == (125, 1) for p in pools)
    dense = [l for l in model.layers if isinstance(l, keras.layers.Dense)]
    assert [d.units for d in dense] == [480, 240, 16]
    assert dense[-1].activation.__name__ == "softmax"
    assert [l.rate for l in model.layers if isinstance(l, keras.layers.Dropout)] == [0.2, 0.2, 0.2]
    assert not any(isinstance(l, keras.layers.Lambda) for l in model.layers)
    opt = model.optimizer
    assert isinstance(opt, keras.optimizers.Adadelta)
    assert float(opt.learning_rate) == pytest.approx(1.0)  # Keras 2's default, which the reference used
    assert model.loss == "categorical_crossentropy"


@pytest.fixture(scope="module")
def tiny_features(labelled):
    """The shared labelled corpus's features (tests/conftest.py): three styles x three tracks, two error rows."""
    return labelled.features


@pytest.fixture(scope="module")
def bundle(labelled):
    """The bundle trained on them with LABELLED_TRAINING, and its validation report."""
    return labelled.bundle, labelled.report


def val_windows(bundle, features) -> int:
    """Windows of the bundle's validation tracks, from the tracks table of ``features``."""
    val = json.loads((bundle / "split.json").read_text())["val"]
    return int(_ok_tracks(features).set_index("track_id").loc[val, "n_windows"].sum())


def _ok_tracks(features):
    from genreclf.formats.featureset import read_tracks

    tracks = read_tracks(str(features))
    return tracks[tracks["status"] == "ok"]


def test_train_writes_a_complete_bundle(bundle, tiny_features):
    out, report = bundle
    for name in ("model.keras", "bundle.json", "metrics.json", "history.json", "training_curves.png",
                 "confusion_matrix.png", "confusion_matrix.csv", "reliability.png", "split.json"):
        assert (out / name).is_file(), name
    info = load_bundle_info(str(out))
    assert info["labels"] == ["ambient", "jazz", "techno"]
    assert Recipe.from_dict(info["recipe"]) == Recipe()
    assert info["genreclf_version"] and info["learning_rate"] == 1.0
    history = json.loads((out / "history.json").read_text())
    assert len(history["loss"]) == 1 and "val_loss" in history
    assert report["tracks"]["n"] == 3 and report["windows"]["n"] == val_windows(out, tiny_features)


def test_the_bundles_network_uses_no_tensorflow_only_option(bundle):
    """A synchronized BatchNormalization (training across replicas) builds only under TensorFlow: the
    bundle leaves it out, so its model.keras loads on any Keras 3 backend (a GPU node with JAX only)."""
    import zipfile

    out, _ = bundle
    with zipfile.ZipFile(out / "model.keras") as z:
        layers = json.loads(z.read("config.json"))["config"]["layers"]
    assert any(layer["class_name"] == "BatchNormalization" for layer in layers)
    assert not [layer["config"]["name"] for layer in layers if layer["config"].get("synchronized")]


def test_the_bundle_is_calibrated_on_its_validation_tracks(bundle):
    """The default: a temperature fitted on validation tracks, applied to each track's mean; it can
    only lower the validation log loss it was fitted on and leaves accuracy as it was."""
    out, report = bundle
    info = load_bundle_info(str(out))
    assert info["calibration"] == "track" and info["temperature"] == report["temperature"] > 0
    assert set(info["temperatures_fitted"]) == {"track", "window"}
    assert report["tracks"]["log_loss"] <= report["uncalibrated"]["log_loss"] + 1e-12
    assert report["tracks"]["accuracy"] == report["uncalibrated"]["accuracy"]


def test_cross_validation_trains_and_tests_every_fold(tiny_features, tmp_path):
    """evaluate --cv 2 --repeat 2: in each repetition each track tested once, by a model that never saw
    it; mean ± sd per variant over the repetitions' means, each recomputed here from the per-fold rows
    (here with balanced class weights, which the folds pass on to training)."""
    from genreclf.crossval import METRICS, VARIANTS, run_crossval

    result = run_crossval(str(tiny_features), str(tmp_path / "cv"), 2, repeats=2, epochs=1, batch_size=8,
                          val_fraction=0.34, class_weight="balanced")
    ok = sorted(_ok_tracks(tiny_features)["track_id"])
    assert len(result["folds"]) == 4 and result["repeats"] == 2 and result["mean_sd_over"] == "repeats"
    for r in (1, 2):
        tested = [t for fold in result["folds"] if fold["repeat"] == r for t in fold["test"]]
        assert sorted(tested) == ok  # every labelled ok track, once per repetition
    for fold in result["folds"]:
        model = tmp_path / "cv" / f"repeat-{fold['repeat']}" / f"fold-{fold['fold']}" / "model"
        val = json.loads((model / "split.json").read_text())["val"]
        assert not set(val) & set(fold["test"])
        info = load_bundle_info(str(model))
        assert info["excluded_tracks"] == len(fold["test"]) and info["class_weight"] == "balanced"
    assert set(result["mean_sd"]) == {name for name, _ in VARIANTS}
    assert len(result["per_fold"]) == 4 * len(VARIANTS)
    for name, _ in VARIANTS:
        for m in METRICS:
            means = [np.mean([row[m] for row in result["per_fold"] if row["variant"] == name and row["repeat"] == r])
                     for r in (1, 2)]
            assert result["per_repeat"][name][m] == pytest.approx(means)
            assert result["mean_sd"][name][m] == pytest.approx([np.mean(means), np.std(means, ddof=1)], nan_ok=True)
    for name in ("cv.json", "cv.csv", "cv.md", "confusion_matrix.png", "reliability.png"):
        assert (tmp_path / "cv" / name).is_file(), name
    assert "| uncalibrated |" in (tmp_path / "cv" / "cv.md").read_text()


def test_split_is_by_track(bundle, tiny_features):

    out, _ = bundle
    val = set(json.loads((out / "split.json").read_text())["val"])
    tracks = _ok_tracks(tiny_features)
    assert len(val) == 3 and val < set(tracks["track_id"])
    assert sorted(tracks.set_index("track_id").loc[sorted(val), "label"]) == ["ambient", "jazz", "techno"]


def test_reloaded_model_predicts_identically_in_a_fresh_process(bundle, tmp_path):
    """The fresh process runs TensorFlow as this one does (oneDNN, pinned by tests/hostenv.py, through
    the environment; the thread pools, which set the order of sums, given), so the same kernels run:
    bit-identical predictions."""
    import tensorflow as tf

    out, _ = bundle
    rng = np.random.default_rng(0)
    x = (rng.random((4, 128, 513, 1)) * 10).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    threading = tf.config.threading
    pools = (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads())
    script = (
        "import numpy as np, tensorflow as tf;"
        f"tf.config.threading.set_intra_op_parallelism_threads({pools[0]});"
        f"tf.config.threading.set_inter_op_parallelism_threads({pools[1]});"
        "from genreclf.formats.bundle import load_model;"
        f"m = load_model({str(out)!r}); np.save({str(tmp_path / 'p.npy')!r}, m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0))"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, timeout=300)
    from genreclf.formats.bundle import load_model

    here = load_model(str(out)).predict(x, verbose=0)
    np.testing.assert_array_equal(np.load(tmp_path / "p.npy"), here)


def test_evaluate_job_agrees_with_training_report(bundle, tiny_features, tmp_path, monkeypatch):
    """evaluate's numbers are train's; on its way the bundle and the features are each opened once."""
    from genreclf.evaluate import run_evaluate

    out, report = bundle
    bundle_places, feature_places = resolutions(monkeypatch, out, tiny_features)
    again = run_evaluate(str(out), str(tiny_features), output=str(tmp_path / "eval"))
    monkeypatch.undo()
    assert sorted(bundle_places) == ["genreclf/formats/bundle.py:open"]  # was 4: info, split, model, reports
    assert sorted(feature_places) == ["genreclf/formats/featureset.py:__init__"]
    assert again["tracks"]["accuracy"] == pytest.approx(report["tracks"]["accuracy"])
    assert again["windows"]["log_loss"] == pytest.approx(report["windows"]["log_loss"], rel=1e-4)
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_a_different_recipe_is_refused(bundle):
    out, _ = bundle
    info = load_bundle_info(str(out))
    with pytest.raises(ConfigError, match="n_fft model=1024 features=2048"):
        check_recipe(info, Recipe(n_fft=2048), "these features")


def test_training_is_reproducible_under_a_seed(bundle, tiny_features, tmp_path, monkeypatch):
    """A second run with the same seed gives the same weights, so the same predictions. On its way,
    --features is resolved in one place (the featurize output's handle), not once per reader."""
    from genreclf.formats.bundle import load_model
    from genreclf.train import run_train

    out, _ = bundle
    again = tmp_path / "again"
    places = resolutions(monkeypatch, tiny_features)
    run_train(str(tiny_features), str(again), **LABELLED_TRAINING)
    monkeypatch.undo()
    assert 1 <= len(places) <= 2, sorted(places)  # seen (the spy works); was 35 stops in 11 modules
    assert json.loads((again / "split.json").read_text()) == json.loads((out / "split.json").read_text())
    x = (np.random.default_rng(5).random((3, 128, 513, 1)) * 10).astype(np.float32)
    np.testing.assert_allclose(load_model(str(again)).predict(x, verbose=0),
                               load_model(str(out)).predict(x, verbose=0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["mixed_float16", "mixed_bfloat16"])
def test_training_in_mixed_precision_writes_a_float32_bundle(tiny_features, tmp_path, precision):
    """A tiny end-to-end run in each 16-bit mode; the bundle scores in float32 wherever it goes."""
    import keras

    from genreclf.formats.bundle import load_model
    from genreclf.train import run_train

    out = tmp_path / precision
    report = run_train(str(tiny_features), str(out), **LABELLED_TRAINING,
                       precision=precision, reader_workers=2)
    info = load_bundle_info(str(out))
    assert info["precision"] == precision and info["reader_workers"] == 2
    assert report["windows"]["n"] == val_windows(out, tiny_features)  # every validation window, once
    model = load_model(str(out))
    assert keras.mixed_precision.dtype_policy().name == "float32"
    assert {layer.dtype_policy.name for layer in model.layers} == {"float32"}
    assert model.inputs[0].dtype == "float16"  # windows travel as stored


@pytest.mark.parametrize("flag, message", [
    (["--epochs", "0"], "[train] epochs = 0 is not allowed: must be an integer >= 1"),
    (["--val-fraction", "1"], "[train] val_fraction = 1.0 is not allowed: must be a number in [0, 1)"),
    (["--shuffle-buffer", "0"], "[train] shuffle_buffer = 0 is not allowed"),
])
def test_a_wrong_training_setting_is_refused_before_any_work(tiny_features, tmp_path, capsys, flag, message):
    """The job's own entry point, in this process (test_cli runs the commands as processes)."""
    from jobs.train import main

    rc = main(["--features", str(tiny_features), "--model", str(tmp_path / "m"), *flag])
    out, err = capsys.readouterr()
    assert rc == 2 and message in err + out
    assert "Traceback" not in err and not (tmp_path / "m").exists()


def test_overwrite_replaces_only_a_bundle(tiny_features):
    """`train --features X --model X --overwrite` used to delete the features X and exit 0."""
    from genreclf.errors import OutputExistsError
    from genreclf.train import run_train

    before = sorted(p.name for p in tiny_features.iterdir())
    with pytest.raises(OutputExistsError, match="not a model bundle"):
        run_train(str(tiny_features), str(tiny_features), overwrite=True, epochs=1)
    assert sorted(p.name for p in tiny_features.iterdir()) == before


def _start_training(features, out, *flags) -> subprocess.Popen:
    """train as a user runs it, in a process of its own (logical devices are set before TensorFlow starts)."""
    from tests import hostenv

    return subprocess.Popen([sys.executable, "-m", "jobs.train", "--features", str(features), "--model", str(out),
                             "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.34", "--seed", "1", *flags],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            env=hostenv.launch_env())


def _finish_training(proc: subprocess.Popen, out) -> tuple:
    """(bundle.json, history.json, the log) of a training started by :func:`_start_training`."""
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    return json.loads((out / "bundle.json").read_text()), json.loads((out / "history.json").read_text()), log


def _train_in_a_fresh_process(features, out, *flags) -> tuple:
    return _finish_training(_start_training(features, out, *flags), out)


def test_two_devices_train_with_every_window_once_into_a_single_device_bundle(tiny_features, tmp_path):
    """The distributed path for real: two logical CPU devices, one replica each (MirroredStrategy).
    Both replicas compute in every epoch, an epoch sees each training and validation window once
    (padding excluded), the bundle is the single-device model, and with dropout off (its masks are
    each replica's own draw) two replicas of 4 windows reach one device's metrics with batches of 8:
    the same losses and accuracies, epoch by epoch, within 1e-4 (sums in another order)."""
    from genreclf.formats.bundle import load_model
    from genreclf.ml.network import build_model

    same = ("--epochs", "2", "--dropout", "0", "--reader-workers", "1")
    one_run = _start_training(tiny_features, tmp_path / "one", "--batch-size", "8", *same)  # alongside: ~5 s
    two, history, log = _train_in_a_fresh_process(tiny_features, tmp_path / "two", "--devices", "2", *same)
    assert two["replicas"] == 2 and two["global_batch"] == 8 and "2 replicas" in log
    per_epoch = two["windows_per_replica"]
    assert len(per_epoch) == len(history["loss"]) == 2
    assert all(len(counts) == 2 and min(counts) > 0 for counts in per_epoch)  # both replicas computed
    assert [sum(counts) for counts in per_epoch] == [int(w) for w in history["windows_seen"]]
    assert history["windows_seen"] == [float(two["train_windows"])] * 2  # each training window once
    val = val_windows(tmp_path / "two", tiny_features)
    assert two["val_windows"] == val and history["val_windows_seen"] == [float(val)] * 2  # padding excluded
    model = load_model(str(tmp_path / "two"))
    single = build_model(tuple(two["input_shape"]), len(two["labels"]), two["recipe"]["dtype"])
    assert [type(layer).__name__ for layer in model.layers] == [type(layer).__name__ for layer in single.layers]
    assert [tuple(w.shape) for w in model.weights] == [tuple(w.shape) for w in single.weights]

    one, one_history, _ = _finish_training(one_run, tmp_path / "one")
    assert one["replicas"] == 1 and one["global_batch"] == 8
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert history[key] == pytest.approx(one_history[key], rel=1e-4, abs=1e-6), key


def _epoch_committed(state, n: int) -> bool:
    import json as _json

    try:
        return state.exists() and _json.loads(state.read_text())["epoch"] >= n
    except ValueError:  # being replaced: read it again
        return False


def test_killed_and_interrupted_train_runs_resume_to_the_uninterrupted_runs_end(tiny_features, tmp_path):
    """Three runs at once: one uninterrupted; one SIGKILLed once its second epoch's checkpoint is
    committed; one sent SIGINT to its process group (a terminal's Ctrl-C, at its default disposition)
    after its first. The interrupted one exits 130 with one line saying to rerun with --resume, no
    traceback, its lock released and its checkpoint kept. Both then resume (`--resume --break-lock`
    for the killed one's lock, plain `--resume` for the interrupted one) and end as the uninterrupted
    run: the same epochs, history and validation metrics (within 1e-5: one reader thread, the same
    seed; weights, optimizer state, early stopping, dropout's random state and the epoch's shuffle
    order all restored), a bundle of the same form, no checkpoint, lock or staging left."""
    import signal
    import time

    from tests import hostenv

    args = [sys.executable, "-m", "jobs.train", "--features", str(tiny_features), "--epochs", "4", "--batch-size", "8",
            "--val-fraction", "0.34", "--seed", "1", "--reader-workers", "1", "--patience", "10"]
    env = hostenv.launch_env()
    whole_run = subprocess.Popen([*args, "--model", str(tmp_path / "whole")], cwd=ROOT, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = subprocess.Popen([*args, "--model", str(tmp_path / "killed")], cwd=ROOT, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stopped = subprocess.Popen([*args, "--model", str(tmp_path / "stopped")], cwd=ROOT, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    states = {name: tmp_path / f".{name}.checkpoint" / "state.json" for name in ("killed", "stopped")}
    deadline, pending = time.time() + 300, {"killed": (killed, 2, signal.SIGKILL), "stopped": (stopped, 1, signal.SIGINT)}
    while pending and time.time() < deadline:
        for name, (proc, epoch, signum) in list(pending.items()):
            if proc.poll() is not None or _epoch_committed(states[name], epoch):
                if proc.poll() is None:
                    os.killpg(proc.pid, signum)
                del pending[name]
        time.sleep(0.05)
    killed.wait(60)
    out, _ = stopped.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL and not (tmp_path / "killed").exists()
    assert json.loads(states["killed"].read_text())["epoch"] in (2, 3)  # committed just before the kill
    assert stopped.returncode == 130, out[-3000:]
    lines = [line for line in out.splitlines() if "interrupted by SIGINT" in line]
    assert len(lines) == 1 and "rerun with --resume" in lines[0], out[-3000:]
    for bad in ("Traceback", "internal error", "KeyboardInterrupt"):
        assert bad not in out, (bad, out[-3000:])
    assert not (tmp_path / ".stopped.lock").exists() and states["stopped"].exists() and not (tmp_path / "stopped").exists()

    resumes = {name: subprocess.Popen([*args, "--model", str(tmp_path / name), "--resume", *extra], cwd=ROOT, env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
               for name, extra in (("killed", ["--break-lock"]), ("stopped", []))}
    for name, proc in resumes.items():
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0 and "resuming after epoch" in err, (name, err[-3000:])
        if name == "stopped":
            assert "taking over the lock" not in err  # the interrupted run released it
    _, err = whole_run.communicate(timeout=600)
    assert whole_run.returncode == 0, err[-3000:]
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())
    info = {d: json.loads((tmp_path / d / "bundle.json").read_text()) for d in ("whole", "killed", "stopped")}
    for name in ("killed", "stopped"):
        resumed = json.loads((tmp_path / name / "history.json").read_text())
        assert set(resumed) == set(whole) and len(resumed["loss"]) == len(whole["loss"]) == 4
        for key in whole:
            np.testing.assert_allclose(resumed[key], whole[key], rtol=1e-5, atol=1e-6, err_msg=f"{name} {key}")
        assert info[name]["epochs_run"] == info["whole"]["epochs_run"] == 4
        assert sorted(os.listdir(tmp_path / name)) == sorted(os.listdir(tmp_path / "whole"))
    assert info["killed"]["resumed_after_epoch"] >= 2 and info["stopped"]["resumed_after_epoch"] >= 1
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []  # no checkpoint, lock or staging left


def test_resume_refuses_another_setting_naming_it(tiny_features, tmp_path):
    from genreclf.errors import ConfigError
    from genreclf.ml import checkpoint

    where = tmp_path / ".m.checkpoint"
    where.mkdir()
    before = {"recipe": {}, "features_commit": "r1", "settings": {"epochs": 4, "batch_size": 8}, "labels": ["a"],
              "split": "x", "replicas": 1}
    (where / "state.json").write_text(json.dumps({"epoch": 2, "fingerprint": before}))
    now = {**before, "settings": {"epochs": 4, "batch_size": 16}}
    with pytest.raises(ConfigError, match=r"another settings \(batch_size: 8 -> 16\)"):
        checkpoint.load(str(where), now)
    with pytest.raises(ConfigError, match=r"no checkpoint at .* run without --resume"):
        checkpoint.load(str(tmp_path / ".none.checkpoint"), before)


def test_a_damaged_checkpoint_is_one_line_saying_to_start_over(tmp_path):
    """Weights deleted or truncated, the optimizer's file truncated: --resume is refused naming the
    file (was an internal error with a traceback)."""
    import keras

    from genreclf.errors import DamagedInputError
    from genreclf.ml import checkpoint

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    where = tmp_path / ".m.checkpoint"
    where.mkdir()
    model.save_weights(str(where / "w.weights.h5"))
    np.savez(where / "o.npz", np.zeros(1))
    state = {"model": "w.weights.h5", "best_weights": "w.weights.h5", "optimizer": "o.npz"}
    good = (where / "w.weights.h5").read_bytes()
    for damage, name in ((lambda: (where / "w.weights.h5").unlink(), "w.weights.h5 is missing"),
                         (lambda: (where / "w.weights.h5").write_bytes(good[: len(good) // 2]), "w.weights.h5 is unreadable"),
                         (lambda: (where / "o.npz").write_bytes(b"PK\x03\x04 cut"), "o.npz is unreadable")):
        (where / "w.weights.h5").write_bytes(good)
        damage()
        with pytest.raises(DamagedInputError, match=rf"{name}.*run without --resume"):
            checkpoint.restore(model, str(where), state)

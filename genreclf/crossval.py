"""K-fold cross-validation on featurize output: folds grouped by artist and stratified by label,
repeated R times with other shuffles (``--repeat R``) so that two recipes compare on equal ground.

Each fold trains a full bundle (``run_train``: its own inner, artist-grouped validation split for
early stopping and the temperature) on the other folds' tracks and is tested on its own. Every
fold is reported three ways from the same predictions: uncalibrated (the reference), with the
temperature applied to the track means, and applied to every window. Fold bundles are kept, so a
rerun with the same folds resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time

import numpy as np
import pandas as pd

from genreclf.config import Settings, load_settings, override
from genreclf.errors import ConfigError
from genreclf.formats.bundle import SPLIT_FILE, Bundle, read_json, write_json
from genreclf.formats.featureset import FeatureSet, Windows
from genreclf.io import storage, tracking
from genreclf.ml.calibration import fit_temperatures, track_probabilities
from genreclf.ml.metrics import classification_report
from genreclf.ml.pipeline import WindowSet
from genreclf.ml.reports import evaluate_predictions, predict_windows, track_codes
from genreclf.ml.split import choose_labels, usable_tracks

log = logging.getLogger(__name__)

#: The ways each fold is scored: (name, calibration mode), with temperatures fitted on the fold
#: bundle's validation tracks.
VARIANTS = (("uncalibrated", "none"), ("temperature per track", "track"), ("temperature per window", "window"))
METRICS = ("accuracy", "macro_f1", "log_loss", "ece")
FOLDS_FILE = "folds.json"
#: Most repetitions of the K folds (each trains K bundles).
MAX_REPEATS = 100


def repeated_folds(tracks: pd.DataFrame, k: int, seed: int, repeats: int = 1) -> list:
    """[(repeat, fold, train_ids, test_ids)]: repetition r (from 1) is :func:`cv_folds` shuffled with
    ``seed + r - 1``, so every track is tested once per repetition, and the folds depend only on the
    tracks (ids, labels, artists), K, the seed and R: the same for every recipe or network compared."""
    if not isinstance(repeats, int) or isinstance(repeats, bool) or not 1 <= repeats <= MAX_REPEATS:
        raise ConfigError(f"--repeat {repeats!r} is not allowed: must be an integer in [1, {MAX_REPEATS}] "
                          "(repetitions of the K folds)")
    tracks = tracks.sort_values("track_id", kind="stable").reset_index(drop=True)  # not the table's row order
    return [(r, i, train, test) for r in range(1, repeats + 1)
            for i, (train, test) in enumerate(cv_folds(tracks, k, seed + r - 1), 1)]


def cv_folds(tracks: pd.DataFrame, k: int, seed: int, group_col: str = "group") -> list:
    """K (train_ids, test_ids) pairs of sorted track ids: scikit-learn's ``StratifiedGroupKFold``
    (shuffled with ``seed``); tracks without a group are their own group. No group, hence no
    artist and no track, is in two test folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not isinstance(k, int) or isinstance(k, bool) or k < 2:
        raise ConfigError(f"--cv {k!r} is not allowed: must be an integer >= 2 (folds)")
    ids = tracks["track_id"].astype(str).to_numpy()
    groups = (tracks[group_col].fillna(tracks["track_id"]) if group_col in tracks else tracks["track_id"]).astype(str)
    n_groups = groups.nunique()
    if n_groups < k:
        raise ConfigError(f"--cv {k}: only {n_groups} groups (artists, or tracks without one) to spread over "
                          f"{k} folds; use --cv {max(2, n_groups)} or fewer")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(sorted(ids[tr]), sorted(ids[te]))
            for tr, te in splitter.split(ids, tracks["label"].astype(str).to_numpy(), groups.to_numpy())]


def _fold_bundle(fold_dir: str, features: FeatureSet, test_ids: list, settings: Settings, labels: list, overrides: dict,
                 recipe) -> str:
    """The fold's bundle: reused when one trained on the same held-out tracks, features recipe and
    training settings is there (calibration aside: it is refitted and reported every way), else trained."""
    from genreclf.train import run_train

    bundle = os.path.join(fold_dir, "model")
    marker = os.path.join(fold_dir, FOLDS_FILE)
    trained_as = {"test": test_ids, "recipe": recipe.to_dict(), "train": _training(settings, overrides)}
    if os.path.isfile(os.path.join(bundle, "bundle.json")) and os.path.isfile(marker):
        if read_json(marker) == trained_as:
            log.info("crossval: %s already trained on these folds and settings: reused", bundle)
            return bundle
    os.makedirs(fold_dir, exist_ok=True)
    run_train(features, bundle, overwrite=True, settings=settings, exclude_tracks=test_ids, labels=labels, **overrides)
    write_json(marker, trained_as)
    return bundle


def _temperatures(model, bundle: Bundle, windows: Windows, recipe, labels: list, batch_size: int, workers: int) -> dict:
    """Each mode's temperature fitted on the fold bundle's validation tracks (split.json), as train
    does, by this code: a rerun re-reports reused bundles with the current calibration."""
    val = bundle.read_json(SPLIT_FILE)["val"]
    if not val:
        return {"track": 1.0, "window": 1.0}
    ids, window_labels, probs = predict_windows(model, WindowSet(windows, recipe, track_ids=val, labels=labels),
                                                batch_size=batch_size, workers=workers)
    codes, _, y_tracks = track_codes(ids, window_labels, labels)
    return fit_temperatures(probs, codes, y_tracks)


def _training(settings: Settings, overrides: dict) -> dict:
    """The [train] settings that shape a fold's weights (all but the post-hoc calibration)."""
    train = {**dataclasses.asdict(settings.train), **overrides}
    train.pop("calibration")
    return train


def _run_fold(i, fold_dir, features, windows, test_ids, settings, labels, overrides, recipe, batch_size,
              workers) -> tuple:
    """Train (or reuse) fold ``i``'s bundle, test it on ``test_ids`` with each calibration variant.
    Returns (its rows of the per-fold table, {variant: track probabilities}, the test tracks' labels)."""
    import keras

    bundle = Bundle.open(_fold_bundle(fold_dir, features, test_ids, settings, labels, overrides, recipe))
    info = bundle.info
    keras.backend.clear_session()
    model = bundle.model()
    test = WindowSet(windows, recipe, track_ids=test_ids, labels=labels)
    ids, window_labels, probs = predict_windows(model, test, batch_size=batch_size, workers=workers)
    codes, _, y_tracks = track_codes(ids, window_labels, labels)
    fitted = _temperatures(model, bundle, windows, recipe, labels, batch_size, workers)
    fold_report = {"fold": i, "test_tracks": len(test_ids), "epochs_run": info.get("epochs_run"), "temperatures": fitted}
    rows, track_probs = [], {}
    for name, mode in VARIANTS:
        t = fitted.get(mode, 1.0) if mode != "none" else 1.0
        report = evaluate_predictions(ids, window_labels, probs, labels, temperature=t, calibration=mode)
        track_probs[name] = track_probabilities(probs, codes, len(y_tracks), temperature=t, mode=mode)
        rows.append({"fold": i, "variant": name, "temperature": t, **{m: report["tracks"][m] for m in METRICS}})
        fold_report[name] = report
    write_json(os.path.join(fold_dir, "test_metrics.json"), fold_report)
    return rows, track_probs, y_tracks


def run_crossval(features: str, output: str, k: int = 5, *, settings: Settings | None = None, seed: int | None = None,
                 repeats: int = 1, batch_size: int | None = None, workers: int = 1, **overrides) -> dict:
    """Cross-validate the training recipe on ``features``, ``repeats`` times over; writes OUTPUT/cv.json,
    cv.csv, cv.md and the pooled confusion matrix and reliability diagram. Returns the summary: mean ± sd
    over the folds (one repetition) or over the repetitions' means (several: the spread that decides
    whether two recipes differ). With MLflow tracking on, one run holds the summary and a nested run per fold."""
    from genreclf.ml.plots import confusion, reliability_diagram

    settings = settings or load_settings()
    batch_size = override(settings, "evaluate", batch_size=batch_size or None).evaluate.batch_size
    if not storage.is_local(output):  # k bundles and their reports are re-read by reruns: kept local
        raise ConfigError(f"evaluate --cv --output {output}: cross-validation writes to a local directory; "
                          "copy the reports to a store afterwards")
    output = storage.to_location(output)
    cfg = override(settings, "train", **overrides).train  # checks the overrides before any work
    seed = cfg.seed if seed is None else seed
    features = FeatureSet.open(features)  # once: every fold's training and tests take this handle
    recipe = features.recipe
    tracks = features.tracks(check=True)
    labels = choose_labels(tracks, cfg.labels_from, settings)
    usable = usable_tracks(tracks, labels).reset_index(drop=True)
    folds = repeated_folds(usable, k, seed, repeats)
    artist = usable.set_index("track_id")["group"] if "group" in usable else None
    log.info("crossval: %d tracks, %d labels, %d folds (grouped by artist, stratified by label)%s, seed %d",
             len(usable), len(labels), k, f" x {repeats} repetitions" if repeats > 1 else "", seed)
    windows = features.windows()
    os.makedirs(output, exist_ok=True)
    started = time.time()
    with tracking.start(settings.mlflow, f"evaluate --cv {k} {storage.basename(output)}",
                        tags={"genreclf.job": "evaluate --cv"}) as tracker:
        rows, pooled, pooled_y = [], {name: [] for name, _ in VARIANTS}, []
        for r, i, train_ids, test_ids in folds:
            counts = usable.set_index("track_id").loc[test_ids, "label"].value_counts().to_dict()
            named = f"repetition {r}/{repeats}, fold {i}/{k}" if repeats > 1 else f"fold {i}/{k}"
            log.info("crossval: %s: %d training tracks, %d test tracks %s", named, len(train_ids), len(test_ids), counts)
            if artist is not None:
                assert not set(artist.loc[test_ids].dropna()) & set(artist.loc[train_ids].dropna()), "artist leak"
            fold_dir = os.path.join(output, *([f"repeat-{r}"] if repeats > 1 else []), f"fold-{i}")
            with tracking.start(settings.mlflow, named, tags={"genreclf.job": "evaluate --cv"}) as fold_run:
                fold_rows, fold_probs, y_tracks = _run_fold(i, fold_dir, features, windows, test_ids, settings, labels,
                                                            overrides, recipe, batch_size, workers)
                fold_run.params({"repeat": r, "fold": i, "test_tracks": len(test_ids), "train_tracks": len(train_ids)})
                fold_run.metrics({row["variant"]: {m: row[m] for m in METRICS} for row in fold_rows})
            rows += [{"repeat": r, **row} for row in fold_rows]
            pooled_y.append(y_tracks)
            for name, probs in fold_probs.items():
                pooled[name].append(probs)
        table = pd.DataFrame(rows)
        per_repeat = table.groupby(["variant", "repeat"], sort=False)[list(METRICS)].mean()
        over = per_repeat if repeats > 1 else table  # the repetitions' means, or the folds
        summary = over.groupby("variant", sort=False)[list(METRICS)].agg(["mean", "std"])
        y_all = np.concatenate(pooled_y)
        pooled_reports = {name: classification_report(y_all, np.concatenate(p), labels) for name, p in pooled.items()}
        chosen = next(name for name, mode in VARIANTS if mode == cfg.calibration)
        confusion(np.asarray(pooled_reports[chosen]["confusion_matrix"]), labels,
                  os.path.join(output, "confusion_matrix.png"), title=f"pooled over {len(folds)} folds ({chosen})")
        reliability_diagram({name: r["reliability"] for name, r in pooled_reports.items()},
                            os.path.join(output, "reliability.png"), title=f"reliability, pooled over {len(folds)} folds")
        table.to_csv(os.path.join(output, "cv.csv"), index=False)
        mean_sd = {v: {m: [float(summary.loc[v, (m, "mean")]), float(summary.loc[v, (m, "std")])] for m in METRICS}
                   for v in summary.index}
        result = {
            "features": features.url, "k": k, "repeats": repeats, "seed": seed, "labels": labels,
            "recipe": recipe.to_dict(), "train": {**dataclasses.asdict(settings.train), **overrides},
            "folds": [{"repeat": r, "fold": i, "test": te} for r, i, _, te in folds],
            "per_fold": rows, "per_repeat": {v: {m: per_repeat.loc[v, m].tolist() for m in METRICS}
                                             for v in per_repeat.index.get_level_values(0).unique()},
            "pooled": pooled_reports, "mean_sd": mean_sd, "mean_sd_over": "repeats" if repeats > 1 else "folds",
            "elapsed_s": round(time.time() - started, 1),
        }
        write_json(os.path.join(output, "cv.json"), result)
        markdown = format_table(result)
        storage.write_text(storage.join(storage.to_url(output), "cv.md"), markdown + "\n")
        tracker.params({"k": k, "repeats": repeats, "seed": seed, "features": result["features"], "recipe": result["recipe"],
                        "train": result["train"]})
        tracker.metrics({"mean": {v: {m: cells[m][0] for m in METRICS} for v, cells in mean_sd.items()},
                         "sd": {v: {m: cells[m][1] for m in METRICS} for v, cells in mean_sd.items()}})
        tracker.artifacts([os.path.join(output, n) for n in ("cv.json", "cv.csv", "cv.md", "confusion_matrix.png",
                                                             "reliability.png")], "cv")
    for line in markdown.splitlines():
        log.info("crossval %s", line)
    log.info("crossval: %d folds in %.0f s; reports in %s", len(folds), result["elapsed_s"], output)
    return result


def format_table(result: dict) -> str:
    """Mean ± sd per variant (over the folds, or over the repetitions' means), as a Markdown table (track level)."""
    repeats = result.get("repeats", 1)
    over = (f"{repeats} repetitions of {result['k']} artist-grouped folds (sd of the repetitions' means)"
            if repeats > 1 else f"{result['k']} artist-grouped folds (sd over the folds)")
    head = f"Track level, mean ± sd over {over}, seed {result['seed']}.\n\n" \
           "| variant | accuracy | macro-F1 | log loss | ECE |\n|---|---|---|---|---|"
    lines = [head]
    for variant, cells in result["mean_sd"].items():
        lines.append(f"| {variant} | " + " | ".join(f"{cells[m][0]:.3f} ± {cells[m][1]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines)

"""The model bundle: one self-contained directory that scoring needs and nothing else.

    model.keras           the trained network (Keras 3 native format)
    bundle.json           labels in output order, the feature recipe, the calibration (mode, temperature),
                          genreclf version, training facts
    metrics.json          evaluation results (window- and track-level)
    history.json          per-epoch loss/accuracy
    training_curves.png   loss and accuracy per epoch
    confusion_matrix.csv/.png   track-level confusion on the validation split
    reliability.png       accuracy against confidence on the validation tracks, calibrated and not
    split.json            the validation track ids (for evaluate)
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from genreclf import __version__
from genreclf.config import Recipe
from genreclf.errors import ConfigError, DamagedInputError
from genreclf.io import storage

MODEL_FILE = "model.keras"
BUNDLE_FILE = "bundle.json"
METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.json"
SPLIT_FILE = "split.json"


def write_json(location: str, obj) -> None:
    """``obj`` as indented JSON at a local path or URL, replaced atomically."""
    storage.write_text(location, json.dumps(obj, indent=2, sort_keys=True, default=float))


def read_json(location: str):
    return json.loads(storage.read_text(location))


def bundle_info(labels: list, recipe: Recipe, **extra) -> dict:
    return {"labels": list(labels), "recipe": recipe.to_dict(), "genreclf_version": __version__,
            "input_shape": [recipe.frames, recipe.bands, 1], **extra}


def write_training_record(directory: str, *, labels: list, recipe: Recipe, history: dict, seed: int,
                          val_fraction: float, val_ids: list, calibration: str, temperatures: dict, **facts) -> None:
    """A trained bundle's record beside its model.keras: history.json, split.json and bundle.json
    (labels, recipe, calibration, version, and the training ``facts``)."""
    write_json(os.path.join(directory, HISTORY_FILE), history)
    write_json(os.path.join(directory, SPLIT_FILE), {"seed": seed, "val_fraction": val_fraction, "val": list(val_ids)})
    write_json(os.path.join(directory, BUNDLE_FILE), bundle_info(
        labels, recipe, seed=seed, calibration=calibration, temperature=temperatures.get(calibration, 1.0),
        temperatures_fitted=temperatures, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **facts))


class Bundle:
    """A model bundle opened once: its location resolved, ``bundle.json`` read and checked; then
    asked for its labels, recipe, calibration, files, local copy (fetched once) and model.
    ``named``: what messages call it (the user's ``models:/...`` URI when this is its fetched copy)."""

    def __init__(self, root: storage.Location, info: dict, named: str):
        self.root, self.info, self.named = root, info, named
        self._local = None

    @classmethod
    def open(cls, location, *, named: str | None = None) -> "Bundle":
        """The bundle at ``location`` (a local path or URL), with a clear error when it is not one."""
        if isinstance(location, Bundle):
            return location
        root = storage.Location.open(location)
        named = named or (root.location if isinstance(location, storage.Location) else location)
        return cls(root, _read_info(root, named), named)

    @property
    def labels(self) -> list:
        return self.info["labels"]

    @property
    def genre_labels(self) -> list | None:
        """A tagger's genre tags (``genre`` is the top of these); None for a genre model."""
        return self.info.get("genre_labels")

    @property
    def recipe(self) -> Recipe:
        return Recipe.from_dict(self.info["recipe"])

    @property
    def network(self) -> str:
        """The network family ([train] network): "reference", or "musicnn" for a head on the pretrained
        backbones and for the taggers (``pretrained:``)."""
        return self.info.get("network") or ("musicnn" if self.info.get("kind") == "tagger" else "reference")

    def calibration(self, enabled: bool = True) -> tuple:
        return calibration_of(self.info, enabled)

    def check_recipe(self, recipe: Recipe, where: str) -> None:
        check_recipe(self.info, recipe, where)

    def read_json(self, name: str):
        """One of the bundle's JSON files (``split.json``, ``metrics.json``...); None when absent."""
        try:
            return read_json(self.root.child(name))
        except FileNotFoundError:
            return None

    def local(self, every_file: bool = False) -> str:
        """A local directory holding the bundle's model.keras and bundle.json (``every_file``: all its
        files): the bundle itself when local, else a copy fetched once (storage.fetch_dir)."""
        if every_file:
            return storage.fetch_dir(self.root)
        if self._local is None:
            self._local = storage.fetch_dir(self.root, names={MODEL_FILE, BUNDLE_FILE})
        return self._local

    def digest(self) -> str:
        """The content digest of model.keras and bundle.json: names a shipped copy and identifies the
        model in a score output's run record."""
        digest = hashlib.sha256()
        for name in (MODEL_FILE, BUNDLE_FILE):
            with open(os.path.join(self.local(), name), "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
        return digest.hexdigest()[:16]

    def model(self, check_labels: bool = True):
        """The bundle's Keras model, checked to predict one class per label (``check_labels``)."""
        return _keras_model(self.local(), len(self.labels) if check_labels else None, self.named)


def load_bundle_info(bundle_dir: str) -> dict:
    """bundle.json of a bundle directory (a local path or URL), checked (:meth:`Bundle.open`)."""
    return Bundle.open(bundle_dir).info


def _read_info(root: storage.Location, named: str) -> dict:
    """bundle.json of the bundle at ``root``, checked: a clear error when it is not a bundle or is damaged."""
    path = storage.join(named, BUNDLE_FILE)
    try:
        found = root.child(BUNDLE_FILE).is_file() and root.child(MODEL_FILE).is_file()
    except OSError as e:
        raise ConfigError(f"model bundle {named} cannot be reached: {storage.describe(e)}") from None
    if not found:
        raise ConfigError(f"{named} is not a genreclf model bundle (needs {BUNDLE_FILE} and {MODEL_FILE}); "
                          "make one with ./spark-submit.sh train")
    try:
        info = read_json(root.child(BUNDLE_FILE))
    except ValueError as e:
        raise _damaged(path, f"is not valid JSON ({str(e).splitlines()[0][:80]})") from None
    labels = info.get("labels") if isinstance(info, dict) else None
    if not (isinstance(labels, list) and labels and all(isinstance(v, str) and v.strip() for v in labels)):
        raise _damaged(path, f"'labels' must be a non-empty list of label names, not {str(labels)[:60]!r}")
    if len(set(labels)) != len(labels):
        raise _damaged(path, f"'labels' names a label twice ({sorted({v for v in labels if labels.count(v) > 1})[:3]})")
    try:
        Recipe.from_dict(info["recipe"])
    except (KeyError, TypeError, ValueError, ConfigError) as e:
        raise _damaged(path, f"has no valid 'recipe' ({str(e).splitlines()[0][:120]})") from None
    return info


def _damaged(location: str, what: str) -> DamagedInputError:
    return DamagedInputError(f"model bundle file {location} {what}: restore the bundle from a copy or train it again")


def check_recipe(info: dict, recipe: Recipe, where: str) -> None:
    """Refuse features made with another recipe than the model was trained on."""
    trained = Recipe.from_dict(info["recipe"])
    if trained != recipe:
        diff = {k: (v, recipe.to_dict()[k]) for k, v in trained.to_dict().items() if recipe.to_dict()[k] != v}
        raise ConfigError(f"the model was trained on features made another way than {where}: "
                          + ", ".join(f"{k} model={a!r} features={b!r}" for k, (a, b) in diff.items())
                          + "; re-featurize with the model's recipe (bundle.json) or train a new model")


def calibration_of(info: dict, enabled: bool = True) -> tuple:
    """(mode, temperature) the bundle's predictions are calibrated with; ("none", 1.0) when disabled
    (``--no-calibration``: the reference's plain mean of window softmaxes) or for older bundles."""
    if not enabled or info.get("calibration", "none") == "none":
        return "none", 1.0
    return info["calibration"], float(info.get("temperature", 1.0))


def load_model(bundle_dir: str, n_labels: int | None = None):
    """The Keras model of the bundle at ``bundle_dir`` (checked to predict ``n_labels`` classes when
    given), without reading its bundle.json (:meth:`Bundle.model` for an opened bundle)."""
    return _keras_model(storage.fetch_dir(bundle_dir, names={MODEL_FILE, BUNDLE_FILE}), n_labels, bundle_dir)


def _keras_model(local: str, n_labels: int | None, named: str):
    """model.keras of the local bundle directory ``local``; a damaged one is one DamagedInputError
    naming the bundle as ``named`` (where the user's bundle is, when ``local`` is its copy)."""
    import zipfile

    import keras

    path, named = os.path.join(local, MODEL_FILE), storage.join(named, MODEL_FILE)
    if not zipfile.is_zipfile(path):
        raise _damaged(named, "is truncated or not a Keras archive")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # Keras raises many types for a damaged archive
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise _damaged(named, "holds a Lambda layer (code in the model: refused, Keras safe mode)") from None
        raise _damaged(named, f"cannot be loaded ({type(e).__name__}: {text[:160]})") from None
    if n_labels is not None and model.output_shape[-1] != n_labels:
        raise _damaged(named, f"predicts {model.output_shape[-1]} classes but {BUNDLE_FILE} lists {n_labels} labels")
    return model

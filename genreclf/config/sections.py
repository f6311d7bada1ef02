"""One place for each fact: the feature recipe and the job settings.

The :class:`Recipe` is the reference solution's preprocessing (see ``../shared/REFERENCE.md``); it is
written next to every dataset and into every model bundle so that a model is never applied to
features made another way. The dataclasses below hold the only defaults, each with its meaning in
the comment beside it; settings files layer over them (:func:`load_settings`), and
``python -m genreclf.config`` prints what is in force.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from dataclasses import dataclass, field

from genreclf.errors import ConfigError, check_fields, one_of
from genreclf.io.storage import StorageSettings
from genreclf.io.tracking import MlflowSettings

#: The 16 top-level genres of FMA / the crowdAI challenge, in the submission's column order.
FMA_GENRES = (
    "Blues", "Classical", "Country", "Easy Listening", "Electronic", "Experimental", "Folk",
    "Hip-Hop", "Instrumental", "International", "Jazz", "Old-Time / Historic", "Pop", "Rock",
    "Soul-RnB", "Spoken",
)

DEFAULT_CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf", "genreclf.toml")


#: Precisions a score may be computed in ([score] precision; genreclf.ml.inference resolves auto).
SCORE_PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: Window functions of the STFT: the reference's symmetric Hann (``scipy.signal.hanning``), and the
#: periodic Hann of librosa and musicnn.
WINDOW_FUNCTIONS = ("hann-symmetric", "hann")
#: Front-ends (genreclf.audio.stft.window_features): STFT magnitudes over linear frequency (the
#: reference), or a power mel spectrogram of ``n_mels`` Slaney bands (musicnn's input).
FRONTENDS = ("stft", "mel")
#: Magnitude compressions (genreclf.audio.stft.compress): none (the reference), log1p(C*|X|), decibels,
#: and musicnn's log10(1 + 10000 x) of the float16-cast power.
MAGNITUDES = ("linear", "log", "db", "musicnn")
#: Floor of the "db" magnitude (-100 dB): silence maps to -100, not -inf.
DB_FLOOR = 1e-5
#: Stored feature dtypes.
FEATURE_DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class Recipe:
    """How audio becomes model input: mono at ``sample_rate``, windows, one STFT magnitude per window.

    Defaults are the reference implementation's: 3 s windows every 1.5 s at 22050 Hz, a centred
    reflect-padded STFT with a symmetric 1024-point Hann window and hop 512, the first 128 of its
    130 frames, stored as (128 time x 513 frequency) linear magnitudes.
    """

    sample_rate: int = 22050  # Hz, mono: every file is decoded and resampled to this
    window: int = 66150  # samples, 3 s
    hop: int = 33075  # samples, 1.5 s
    min_window_fraction: float = 0.9  # a window is kept when at least this much of it is audio
    n_fft: int = 1024  # STFT size: n_fft // 2 + 1 frequency bins (513)
    stft_hop: int = 512  # samples between STFT frames
    frames: int = 128  # STFT frames kept per window (the first 128 of 130)
    window_function: str = "hann-symmetric"  # the reference's scipy.signal.hanning; "hann": periodic (librosa's)
    frontend: str = "stft"  # "stft": magnitudes over 513 linear bins (the reference); "mel": power mel bands
    n_mels: int = 96  # mel bands (frontend "mel" only; Slaney scale and norm, as librosa)
    magnitude: str = "linear"  # "linear" (the reference), "log": log1p(log_scale*|X|), "db": 20*log10(max(|X|, DB_FLOOR))
    log_scale: float = 100.0  # C of the "log" magnitude (unused otherwise)
    dtype: str = "float16"  # stored precision of the features (halves storage vs float32)

    def __post_init__(self):
        check_fields(self, "recipe", {
            "sample_rate": (lambda v: isinstance(v, int) and 1000 <= v <= 384000, "an integer in [1000, 384000] (Hz)"),
            "n_fft": (lambda v: isinstance(v, int) and 16 <= v <= 65536, "an integer in [16, 65536]"),
            "window": (lambda v: isinstance(v, int) and v >= self.n_fft,
                       f"an integer of samples >= n_fft ({self.n_fft})"),
            "hop": (lambda v: isinstance(v, int) and v >= 1, "an integer of samples >= 1"),
            "min_window_fraction": (lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
            "stft_hop": (lambda v: isinstance(v, int) and v >= 1, "an integer of samples >= 1"),
            "frames": (lambda v: isinstance(v, int) and 4 <= v <= self.window // self.stft_hop + 1,
                       f"an integer in [4, window // stft_hop + 1 = {self.window // self.stft_hop + 1}] "
                       "(the model's first convolution spans 4 frames; a window holds no more)"),
            "window_function": (lambda v: v in WINDOW_FUNCTIONS, one_of(WINDOW_FUNCTIONS)),
            "frontend": (lambda v: v in FRONTENDS, one_of(FRONTENDS)),
            "n_mels": (lambda v: isinstance(v, int) and 1 <= v <= self.n_fft // 2 + 1,
                       f"an integer in [1, n_fft // 2 + 1 = {self.n_fft // 2 + 1}]"),
            "magnitude": (lambda v: v in MAGNITUDES and (v != "musicnn" or self.frontend == "mel"),
                          one_of(MAGNITUDES) + ' ("musicnn" with frontend "mel")'),
            "log_scale": (lambda v: isinstance(v, (int, float)) and 0 < v < float("inf"), "a number > 0"),
            "dtype": (lambda v: v in FEATURE_DTYPES, one_of(FEATURE_DTYPES)),
        })

    @property
    def bins(self) -> int:
        """Frequency bins of the one-sided STFT."""
        return self.n_fft // 2 + 1

    @property
    def bands(self) -> int:
        """Frequency rows of the features: mel bands, or the STFT's bins."""
        return self.n_mels if self.frontend == "mel" else self.bins

    @property
    def min_window_samples(self) -> int:
        """Fewest decoded samples a (zero-padded) window may hold: 59535 for the defaults."""
        return int(round(self.window * self.min_window_fraction))

    @property
    def shape(self) -> tuple:
        """Shape of one window's features: (frames, bands)."""
        return (self.frames, self.bands)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown recipe keys {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


# Upper bounds that protect memory, refused before any work (a batch of 1e12 was accepted once).
# A reference window is 128 x 513 values: 0.25 MB as float32 input, and its layer outputs sum to
# 1.38 MB (build_model, summed over layers): ~1.7 MB a window predicted, ~3 MB trained (the
# activations kept for the gradients, and the gradients).
#: Windows per model call (score, evaluate): 2048 x 1.7 MB = 3.4 GB, within a 4 GB worker.
MAX_PREDICT_BATCH = 2048
#: Windows per training step: 4096 x 3 MB = 12 GB, within a 16 GB GPU (or a CPU node's share).
MAX_TRAIN_BATCH = 4096
#: Windows pooled for shuffling, stored as float16 (0.125 MB each): 65536 of them are 8 GB.
MAX_SHUFFLE_WINDOWS = 65536
#: Files per featurize task: a task holds its file list and one status row per file (~1 KB): 100 MB.
MAX_FILES_PER_TASK = 100_000
#: Input bytes per task: a task holds one file's features at a time, so this bounds its duration
#: (and what a crash loses), not its memory: 64 GB of mp3 is ~3 days of one core.
MAX_TASK_MB = 65536
#: Files decoded ahead per score task: each holds one decoded track, up to 318 MB (an hour, the
#: default max_duration_s, at 22.05 kHz float32): 16 of them are 5 GB; a 5-minute track is 26 MB.
MAX_DECODE_THREADS = 16
#: A file decoded whole is 318 MB an hour (22.05 kHz float32): 4 h is 1.3 GB per decoding thread.
MAX_DURATION_S = 4 * 3600
#: Reader threads of train, each buffering a row group (up to 256 MB): 32 of them are 8 GB.
MAX_READER_WORKERS = 32
#: A row group is buffered whole by the task writing it and by each reader thread (up to 8): 8 x 256 MB = 2 GB.
MAX_ROW_GROUP_MB = 256


def _count_up_to(limit: int, what: str):
    return (lambda v: isinstance(v, int) and 1 <= v <= limit,
            f"an integer in [1, {limit}] ({what}; the bound keeps memory in check: see genreclf/config.py)")


@dataclass(frozen=True)
class FeaturizeSettings:
    """Knobs of the featurize job; defaults in ``conf/genreclf.toml``."""

    task_mb: int = 256  # input bytes per Spark task (score from audio too): ~350 mp3s, ~1 min of one core
    files_per_task: int = 1024  # most files per Spark task, whatever their size (many tiny files)
    row_group_size_mb: int = 32  # Parquet row group of the windows dataset (~250 windows); petastorm reads by row group
    max_duration_s: float = 3600.0  # longer files get an error row; bounds worker memory per file

    def __post_init__(self):
        check_fields(self, "featurize", {
            "task_mb": _count_up_to(MAX_TASK_MB, "MB of input files"),
            "files_per_task": _count_up_to(MAX_FILES_PER_TASK, "files"),
            "row_group_size_mb": _count_up_to(MAX_ROW_GROUP_MB, "MB"),
            "max_duration_s": (lambda v: isinstance(v, (int, float)) and 0 < v <= MAX_DURATION_S,
                               f"a number of seconds in (0, {MAX_DURATION_S}] (it bounds a worker's memory per file)"),
        })


@dataclass(frozen=True)
class ScoreSettings:
    """Knobs of the score job; defaults in ``conf/genreclf.toml``."""

    batch_size: int = 64  # windows per model call, across tracks: bounds a worker's memory
    max_windows: int = 0  # 0: average every window; N: only the centred N windows of longer tracks
    precision: str = "auto"  # model arithmetic: "auto" = bfloat16 on GPUs (float16 before compute capability 8.0) and on CPUs with AMX / AVX-512 BF16, float32 elsewhere; "float16" needs GPU executors
    decode_threads: int = 0  # files decoded ahead in threads while the model predicts; 0 = inline

    def __post_init__(self):
        check_fields(self, "score", {
            "batch_size": _count_up_to(MAX_PREDICT_BATCH, "windows"),
            "max_windows": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0 (0 = every window)"),
            "precision": (lambda v: v in SCORE_PRECISIONS, one_of(SCORE_PRECISIONS)),
            "decode_threads": (lambda v: isinstance(v, int) and 0 <= v <= MAX_DECODE_THREADS,
                               f"an integer in [0, {MAX_DECODE_THREADS}] (0 = inline; each thread holds a decoded track)"),
        })


#: Training precisions: auto (the device's native one: genreclf.ml.inference.resolve), or a Keras
#: dtype policy. float32 reproduces the reference; the mixed ones compute in 16 bits with float32
#: weights (GPUs; bfloat16 also on CPUs with AMX / AVX-512 BF16, though slower there than float32).
TRAIN_PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
#: Where a fitted temperature is applied (genreclf.ml.calibration): the track's mean, every window, or nowhere.
CALIBRATION_MODES = ("track", "window", "none")
#: Loss weights per class: equal (the reference), or inverse to the class's share of training windows.
CLASS_WEIGHTS = ("none", "balanced")
#: What train fits: the reference CNN from scratch, or a softmax head on the frozen pretrained musicnn.
TRAIN_NETWORKS = ("reference", "musicnn")
#: Window readers of the training pipeline (genreclf.ml.pipeline).
READERS = ("arrow", "petastorm")
#: Where the label list comes from: the sorted labels of the data, or [labels] genres.
LABEL_SOURCES = ("data", "conf")


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of the trainer; defaults in ``conf/genreclf.toml`` ``[train]``, each overridable by a flag."""

    network: str = "reference"  # "reference": the 4th-place CNN from scratch; "musicnn": a genre head on the frozen pretrained musicnn (features of conf/musicnn.toml's recipe)
    epochs: int = 30  # most epochs; early stopping may end sooner
    batch_size: int = 128  # windows per step (the reference: 128)
    dropout: float = 0.2  # the reference network's dropout rate before each dense layer (training only)
    val_fraction: float = 0.2  # share of tracks (whole artists/albums when known) held out for validation
    seed: int = 0  # the split, the initial weights and the shuffling
    patience: int = 5  # epochs without a better validation loss before stopping
    labels_from: str = "data"  # the label list: "data" = the sorted labels found in the data; "conf" = [labels] genres
    shuffle_buffer: int = 1024  # windows pooled (over all reader threads) and drawn from at random
    reader: str = "arrow"  # window reader: "arrow" = pyarrow row groups (fast); "petastorm" = petastorm's make_batch_reader
    reader_workers: int = 0  # reader threads; 0 = auto: 1 on CPU (reproducible order), one per core up to 8 with a GPU (measured ~15 k windows/s per core)
    precision: str = "auto"  # "auto" = mixed_bfloat16 on GPUs of compute capability >= 8.0, mixed_float16 before, float32 on CPUs (16-bit measured slower there); or a Keras policy; the bundle is float32 either way
    devices: int = 0  # replicas (one per device): 0 = every GPU of the node (one device on a CPU); N = the first N
    cache_dir: str = ""  # a local directory to copy remote features (s3://, gs://, hdfs://) to once instead of reading them every epoch (empty: read in place)
    calibration: str = "track"  # temperature fitted on validation tracks, applied to: "track", "window", "none"
    class_weight: str = "none"  # "balanced": weight each class's windows by n / (classes * class count)

    def __post_init__(self):
        check_fields(self, "train", {
            "network": (lambda v: v in TRAIN_NETWORKS, one_of(TRAIN_NETWORKS)),
            "epochs": (lambda v: isinstance(v, int) and v >= 1, "an integer >= 1"),
            "batch_size": _count_up_to(MAX_TRAIN_BATCH, "windows"),
            "dropout": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
            "val_fraction": (lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "a number in [0, 1)"),
            "seed": (lambda v: isinstance(v, int), "an integer"),
            "patience": (lambda v: isinstance(v, int) and v >= 0, "an integer >= 0"),
            "labels_from": (lambda v: v in LABEL_SOURCES, one_of(LABEL_SOURCES)),
            "shuffle_buffer": _count_up_to(MAX_SHUFFLE_WINDOWS, "windows"),
            "reader": (lambda v: v in READERS, one_of(READERS)),
            "reader_workers": (lambda v: isinstance(v, int) and 0 <= v <= MAX_READER_WORKERS,
                               f"an integer in [0, {MAX_READER_WORKERS}] (0 = auto)"),
            "precision": (lambda v: v in TRAIN_PRECISIONS, one_of(TRAIN_PRECISIONS)),
            "devices": (lambda v: isinstance(v, int) and 0 <= v <= 64, "an integer in [0, 64] (0 = every GPU)"),
            "cache_dir": (lambda v: isinstance(v, str), "a directory path (or empty)"),
            "calibration": (lambda v: v in CALIBRATION_MODES, one_of(CALIBRATION_MODES)),
            "class_weight": (lambda v: v in CLASS_WEIGHTS, one_of(CLASS_WEIGHTS)),
        })


@dataclass(frozen=True)
class EvaluateSettings:
    """Knobs of evaluation (evaluate, evaluate --cv, and the reports train writes)."""

    batch_size: int = 64  # windows per model call when predicting for a report: bounds memory

    def __post_init__(self):
        check_fields(self, "evaluate", {"batch_size": _count_up_to(MAX_PREDICT_BATCH, "windows")})


@dataclass(frozen=True)
class Settings:
    """Everything a job reads from configuration."""

    recipe: Recipe = field(default_factory=Recipe)
    featurize: FeaturizeSettings = field(default_factory=FeaturizeSettings)
    score: ScoreSettings = field(default_factory=ScoreSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    evaluate: EvaluateSettings = field(default_factory=EvaluateSettings)
    mlflow: MlflowSettings = field(default_factory=MlflowSettings)
    genres: tuple = FMA_GENRES


#: The sections of a settings file, and the dataclass of each ([labels] holds ``genres``).
SECTIONS = {"recipe": Recipe, "featurize": FeaturizeSettings, "score": ScoreSettings, "train": TrainSettings,
            "storage": StorageSettings, "evaluate": EvaluateSettings, "mlflow": MlflowSettings}


#: The vocabulary of each setting that has one (its flag's choices).
CHOICES = {"score": {"precision": SCORE_PRECISIONS},
           "train": {"network": TRAIN_NETWORKS, "labels_from": LABEL_SOURCES, "reader": READERS,
                     "precision": TRAIN_PRECISIONS, "calibration": CALIBRATION_MODES, "class_weight": CLASS_WEIGHTS}}


def override(settings: Settings, section: str, **values) -> Settings:
    """``settings`` with keys of ``[section]`` replaced: the last layer (CLI flags, a caller's keywords),
    the one way one is applied. None values are skipped (a flag not given); an unknown key is refused
    and the values are checked as a settings file's are."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return settings
    known = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if set(values) - known:
        raise ConfigError(f"unknown [{section}] setting(s) {sorted(set(values) - known)}; known: {sorted(known)}")
    return dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **values)})


def _read_layer(path: str) -> dict:
    """One settings file's tables, checked for unknown sections and keys."""
    from genreclf.io import storage

    try:
        data = tomllib.loads(storage.read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = set(data) - set(SECTIONS) - {"labels"}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}; known: {sorted([*SECTIONS, 'labels'])}")
    for name, table in data.items():
        known = {f.name for f in dataclasses.fields(SECTIONS[name])} if name in SECTIONS else {"genres"}
        if set(table) - known:
            raise ConfigError(f"{path}: [{name}] has unknown keys {sorted(set(table) - known)}; known: {sorted(known)}")
    return data


def load_settings(path: str | None = None) -> Settings:
    """The settings in layers, each listing only what it changes: the dataclasses' defaults, then
    ``conf/genreclf.toml`` (this installation's changes) when present, then ``path`` (``--conf``: a
    preset or a run's own file, a local path or URL). CLI flags are the last layer (:func:`override`)."""
    layers = [DEFAULT_CONF] if os.path.exists(DEFAULT_CONF) else []
    if path and not (os.path.exists(path) and layers and os.path.samefile(path, DEFAULT_CONF)):
        layers.append(path)
    merged: dict = {}
    for layer in layers:
        for name, table in _read_layer(layer).items():
            merged.setdefault(name, {}).update(table)
    sections = {name: cls(**merged.get(name, {})) for name, cls in SECTIONS.items()}
    return Settings(**sections, genres=tuple(merged.get("labels", {}).get("genres", FMA_GENRES)))


def field_docs(cls) -> dict:
    """{key: the comment beside its default in ``cls``'s source}: each setting's meaning, written once."""
    import inspect

    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"^    (\w+): [^=]+= .*?  # (.*)$", line)
        if m:
            docs[m.group(1)] = m.group(2)
    return docs


def describe(settings: Settings) -> str:
    """``settings`` as a complete TOML file, each key with its meaning (``python -m genreclf.config``)."""
    out = []
    for name, cls in SECTIONS.items():
        section, docs = getattr(settings, name), field_docs(cls)
        out.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            value = json.dumps(getattr(section, f.name))
            doc = docs.get(f.name, "")
            out.append(f"{f.name} = {value}" + (f"  # {doc}" if doc else ""))
        out.append("")
    out += ["[labels]", "genres = " + json.dumps(list(settings.genres)), ""]
    return "\n".join(out)


def main(argv=None) -> int:
    """Print the settings in force: ``python -m genreclf.config [--conf FILE]``."""
    import argparse
    import sys

    p = argparse.ArgumentParser(prog="python -m genreclf.config",
                                description="Print every setting in force (defaults <- conf/genreclf.toml <- --conf) "
                                            "as TOML, each key with its meaning.")
    p.add_argument("--conf", metavar="TOML", help="a preset or settings file layered on conf/genreclf.toml")
    args = p.parse_args(argv)
    try:
        print(describe(load_settings(args.conf)))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

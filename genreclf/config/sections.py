"""The settings of the jobs, a dataclass per section of a settings file: the only defaults, each with
its meaning in the comment beside it (flags take their help from it), the vocabulary of each key
that has one, and the bounds that keep memory in check. ``genreclf.config.layers`` lays files and
flags over them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field

from genreclf.config.recipe import Recipe
from genreclf.errors import check_fields, one_of

#: The 16 top-level genres of FMA / the crowdAI challenge, in the submission's column order.
FMA_GENRES = (
    "Blues", "Classical", "Country", "Easy Listening", "Electronic", "Experimental", "Folk",
    "Hip-Hop", "Instrumental", "International", "Jazz", "Old-Time / Historic", "Pop", "Rock",
    "Soul-RnB", "Spoken",
)

#: Precisions a score may be computed in ([score] precision; genreclf.ml.inference resolves auto).
SCORE_PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: Keras dtype policies of each computed precision (16-bit compute, float32 weights).
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

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
            f"an integer in [1, {limit}] ({what}; the bound keeps memory in check: see genreclf/config/sections.py)")


def _names_of(value, vocabulary: tuple) -> bool:
    """A comma-separated list of distinct names from ``vocabulary`` (at least one)."""
    if not isinstance(value, str):
        return False
    names = [n.strip() for n in value.split(",")]
    return all(n in vocabulary for n in names) and len(set(names)) == len(names)


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
    precision: str = "auto"  # model arithmetic: "auto" = bfloat16 on GPUs (float16 before compute capability 8.0); on a CPU the fastest of float32 and native bfloat16 (and oneDNN on/off), timed once per machine and network; "float16" needs GPU executors
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
#: What train fits: the reference CNN from scratch, or a softmax head on frozen pretrained backbones.
TRAIN_NETWORKS = ("reference", "musicnn")
#: The pretrained backbones a head can sit on ([train] backbones): the musicnn wheel's four checkpoints.
BACKBONES = ("musicnn-msd", "musicnn-mtt", "vgg-msd", "vgg-mtt")
#: Which layers of each backbone feed the head ([train] head_layers): the embedding before the tags
#: (musicnn's 200-d dense, VGG's flattened last pooled map), the pooled mid-end (musicnn's 1506 max and
#: mean of its mid-end, VGG's mean and max of its fourth block), the 50 tag probabilities.
HEAD_LAYERS = ("penultimate", "midend", "tags")
#: How heads on several backbones are combined: one head on their features side by side, or one head
#: per backbone with their log-probabilities averaged (late fusion).
FUSIONS = ("concat", "late")
#: Window readers of the training pipeline (genreclf.ml.pipeline).
READERS = ("arrow", "petastorm")
#: Where the label list comes from: the sorted labels of the data, or [labels] genres.
LABEL_SOURCES = ("data", "conf")


@dataclass(frozen=True)
class TrainSettings:
    """Knobs of the trainer; defaults in ``conf/genreclf.toml`` ``[train]``, each overridable by a flag."""

    network: str = "reference"  # "reference": the 4th-place CNN from scratch; "musicnn": a genre head on frozen pretrained backbones (features of conf/musicnn.toml's recipe)
    backbones: str = "musicnn-msd"  # musicnn heads: the pretrained backbones, comma-separated (musicnn-msd, musicnn-mtt, vgg-msd, vgg-mtt), each run once per window
    head_layers: str = "penultimate"  # musicnn heads: the layers of each backbone the head reads, comma-separated (penultimate, midend, tags)
    fusion: str = "concat"  # musicnn heads on several backbones: "concat" = one head on their features side by side; "late" = a head each, log-probabilities averaged
    head_c: float = 0.001  # musicnn heads: inverse L2 strength (scikit-learn's C) of the softmax regression on standardised features; smaller = smoother (chosen by 5 x 5 cross-validation, docs/quality.md)
    epochs: int = 30  # most epochs of the reference network; early stopping may end sooner
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
            "backbones": (lambda v: _names_of(v, BACKBONES), "distinct comma-separated names among " + ", ".join(BACKBONES)),
            "head_layers": (lambda v: _names_of(v, HEAD_LAYERS), "distinct comma-separated names among " + ", ".join(HEAD_LAYERS)),
            "fusion": (lambda v: v in FUSIONS, one_of(FUSIONS)),
            "head_c": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0, "a number > 0"),
        })

    def names(self, key: str) -> tuple:
        """A comma-separated setting (backbones, head_layers) as its names, in order."""
        return tuple(n.strip() for n in getattr(self, key).split(","))


@dataclass(frozen=True)
class EvaluateSettings:
    """Knobs of evaluation (evaluate, evaluate --cv, and the reports train writes)."""

    batch_size: int = 64  # windows per model call when predicting for a report: bounds memory

    def __post_init__(self):
        check_fields(self, "evaluate", {"batch_size": _count_up_to(MAX_PREDICT_BATCH, "windows")})


@dataclass(frozen=True)
class StorageSettings:
    """How object stores are reached ([storage]; genreclf.io.storage keeps the options in force); credentials come from the environment
    (AWS_ACCESS_KEY_ID / AWS_PROFILE ...), never from a config file."""

    endpoint_url: str = ""  # S3-compatible endpoint (MinIO, Ceph...), e.g. "http://10.0.0.5:9000"; "" = AWS
    region: str = ""  # S3 region; "" = the environment's (AWS_REGION / AWS_DEFAULT_REGION / profile)
    retries: int = 3  # further attempts after a transient read error (connection reset, throttling)
    retry_backoff_s: float = 0.5  # first wait; doubles per retry
    read_ahead_kb: int = 1024  # remote reads are buffered in requests of this size
    list_progress_s: float = 5.0  # a progress line this often while listing a large input
    lock_stale_after_s: float = 86400.0  # an output lock this old may be broken (--break-lock)

    def __post_init__(self):
        check_fields(self, "storage", {
            "endpoint_url": (lambda v: isinstance(v, str) and (v == "" or re.match(r"^https?://[^/]+/?$", v)),
                             'a URL "http://host:port" or "https://host" (or "" for AWS)'),
            "region": (lambda v: isinstance(v, str), "a region name (or empty)"),
            "retries": (lambda v: isinstance(v, int) and 0 <= v <= 20, "an integer in [0, 20]"),
            "retry_backoff_s": (lambda v: isinstance(v, (int, float)) and 0 <= v <= 60, "seconds in [0, 60]"),
            "read_ahead_kb": (lambda v: isinstance(v, int) and 4 <= v <= 262144, "an integer in [4, 262144] (KiB)"),
            "list_progress_s": (lambda v: isinstance(v, (int, float)) and v > 0, "seconds > 0"),
            "lock_stale_after_s": (lambda v: isinstance(v, (int, float)) and v > 0, "seconds > 0"),
        })

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class MlflowSettings:
    """Where runs and models are logged ([mlflow]); credentials come from the environment
    (MLFLOW_TRACKING_TOKEN, MLFLOW_TRACKING_USERNAME/PASSWORD), never from a config file."""

    tracking_uri: str = ""  # an MLflow tracking server, e.g. "http://mlflow:5000"; "" = MLFLOW_TRACKING_URI, or none
    experiment: str = ""  # the experiment runs go to; "" = MLFLOW_EXPERIMENT_NAME, else "genreclf"

    def __post_init__(self):
        check_fields(self, "mlflow", {
            "tracking_uri": (lambda v: isinstance(v, str), 'a URI such as "http://host:5000" (or "")'),
            "experiment": (lambda v: isinstance(v, str), "an experiment name (or empty)"),
        })

    def uri(self) -> str:
        """The tracking URI in force ("" = tracking off)."""
        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")

    def experiment_name(self) -> str:
        return self.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME", "") or "genreclf"


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
           "train": {"network": TRAIN_NETWORKS, "fusion": FUSIONS, "labels_from": LABEL_SOURCES, "reader": READERS,
                     "precision": TRAIN_PRECISIONS, "calibration": CALIBRATION_MODES, "class_weight": CLASS_WEIGHTS}}

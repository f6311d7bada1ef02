"""One place for each fact: the feature recipe and the job settings, below every other layer but errors.

- :mod:`~genreclf.config.recipe`: the :class:`Recipe` (how audio becomes model input) and its vocabularies;
- :mod:`~genreclf.config.sections`: a settings dataclass per section of a settings file (storage and mlflow
  too), holding the only defaults, each key's meaning beside it, vocabularies and memory bounds;
- :mod:`~genreclf.config.layers`: files and flags laid over the defaults (:func:`load_settings`,
  :func:`override`), and the settings described back (``python -m genreclf.config`` prints what is in force).
"""

from genreclf.config.layers import DEFAULT_CONF, describe, field_docs, load_settings, override
from genreclf.config.recipe import (
    DB_FLOOR, FEATURE_DTYPES, FRONTENDS, MAGNITUDES, WINDOW_FUNCTIONS, Recipe,
)
from genreclf.config.sections import (
    BACKBONES, CALIBRATION_MODES, CHOICES, CLASS_WEIGHTS, FMA_GENRES, FUSIONS, HEAD_LAYERS, LABEL_SOURCES, MAX_DECODE_THREADS, MAX_DURATION_S,
    MAX_FILES_PER_TASK, MAX_PREDICT_BATCH, MAX_READER_WORKERS, MAX_ROW_GROUP_MB, MAX_SHUFFLE_WINDOWS, MAX_TASK_MB,
    MAX_TRAIN_BATCH, POLICIES, READERS, SCORE_PRECISIONS, SECTIONS, TRAIN_NETWORKS, TRAIN_PRECISIONS, EvaluateSettings,
    FeaturizeSettings, MlflowSettings, ScoreSettings, Settings, StorageSettings, TrainSettings,
)

__all__ = [
    "DEFAULT_CONF", "describe", "field_docs", "load_settings", "override",
    "DB_FLOOR", "FEATURE_DTYPES", "FRONTENDS", "MAGNITUDES", "WINDOW_FUNCTIONS", "Recipe",
    "BACKBONES", "CALIBRATION_MODES", "CHOICES", "CLASS_WEIGHTS", "FMA_GENRES", "FUSIONS", "HEAD_LAYERS", "LABEL_SOURCES", "MAX_DECODE_THREADS",
    "MAX_DURATION_S", "MAX_FILES_PER_TASK", "MAX_PREDICT_BATCH", "MAX_READER_WORKERS", "MAX_ROW_GROUP_MB",
    "MAX_SHUFFLE_WINDOWS", "MAX_TASK_MB", "MAX_TRAIN_BATCH", "POLICIES", "READERS", "SCORE_PRECISIONS", "SECTIONS",
    "TRAIN_NETWORKS", "TRAIN_PRECISIONS", "EvaluateSettings", "FeaturizeSettings", "MlflowSettings",
    "ScoreSettings", "Settings", "StorageSettings", "TrainSettings",
]

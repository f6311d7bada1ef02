"""A genreclf bundle as an MLflow ``pyfunc`` model: a DataFrame with a ``path`` column (audio files,
any location the storage layer reads) in, one row per file out: ``status``, ``error``, ``genre``,
``confidence`` and one probability column per label, the numbers ``score`` gives for that file.

For users who score with ``mlflow.pyfunc.spark_udf`` or serve models with MLflow. ``score`` adds
what a catalogue job needs beyond it: a crash-safe commit of the whole output, incremental reruns,
windows of several tracks batched into one model call, and the run's summary. Imported only when
MLflow is (tracking on, or MLflow loading the model): train logs this file as the model's code
(MLflow's "models from code", no pickled object), which ends by naming the model.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

from genreclf.config import Recipe, Settings
from genreclf.formats.bundle import calibration_of
from genreclf.formats.schema import STATUS_OK
from genreclf.formats.scores import genre_candidates, top_genre

#: Output columns before the per-label probabilities.
FIXED_COLUMNS = ("path", "status", "error", "genre", "confidence")


def model_config(settings: Settings) -> dict:
    """The scoring settings a logged model applies ([score] / [featurize] of the run that logged it);
    ``mlflow.pyfunc.load_model(uri, model_config=...)`` or ``spark_udf(..., model_config=...)`` override them."""
    return {"precision": settings.score.precision, "batch_size": settings.score.batch_size,
            "max_windows": settings.score.max_windows, "max_duration_s": settings.featurize.max_duration_s}


def signature(labels: list):
    """The model's input (a ``path`` column) and output (the fixed columns, then one per label)
    schema: ``spark_udf`` takes its result type from it."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    fixed = [ColSpec("string", "path"), ColSpec("string", "status"), ColSpec("string", "error", required=False),
             ColSpec("string", "genre", required=False), ColSpec("double", "confidence", required=False)]
    return ModelSignature(inputs=Schema([ColSpec("string", "path")]),
                          outputs=Schema(fixed + [ColSpec("double", label, required=False) for label in labels]))


class GenreclfModel(mlflow.pyfunc.PythonModel):
    """The bundle in the model's ``bundle`` artifact, applied to audio files as ``score`` does."""

    def load_context(self, context):
        from genreclf.ml.model_cache import get_model

        self.config = {**model_config(Settings()), **(context.model_config or {})}
        self.info, self.model, self.computed = get_model(context.artifacts["bundle"], self.config["precision"])
        self.recipe = Recipe.from_dict(self.info["recipe"])
        self.calibration = calibration_of(self.info, True)
        self.candidates = genre_candidates(self.info["labels"], self.info.get("genre_labels"))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from genreclf.audio.extract import featurize_file
        from genreclf.ml.inference import excerpt, mean_probabilities, predict

        paths = model_input["path"] if isinstance(model_input, pd.DataFrame) else pd.Series(model_input)
        labels = self.info["labels"]
        rows = []
        for path in paths.astype(str):
            result = featurize_file(path, self.recipe, max_duration_s=self.config["max_duration_s"])
            row = dict.fromkeys((*FIXED_COLUMNS, *labels))
            row.update(path=path, status=result.row["status"], error=result.row["error"])
            if result.row["status"] == STATUS_OK:
                feats = result.features[excerpt(len(result.features), self.config["max_windows"])]
                probs = mean_probabilities(predict(self.model, feats, self.config["batch_size"]),
                                           temperature=self.calibration[1], calibration=self.calibration[0])
                top = top_genre(probs, self.candidates)
                row.update(genre=labels[top], confidence=float(probs[top]),
                           **{label: float(p) for label, p in zip(labels, probs)})
            rows.append(row)
        out = pd.DataFrame(rows, columns=[*FIXED_COLUMNS, *labels])
        return out.astype({label: np.float64 for label in labels})


mlflow.models.set_model(GenreclfModel())

"""MLflow, as teams that keep models in a registry use it: a real tracking server on 127.0.0.1, a
training run logged and its model registered, score and evaluate of a ``models:/`` URI equal to
the bundle's, and MLflow's own ``spark_udf`` giving the numbers score gives."""

import dataclasses
import json
import os

import numpy as np
import pytest

from genreclf.config import MlflowSettings, Settings
from genreclf.errors import ConfigError
from tests.corpus import LABELLED_TRAINING

NAME = "genre-test"


def _settings(uri: str) -> Settings:
    settings = Settings(mlflow=MlflowSettings(tracking_uri=uri, experiment="tests"))
    return dataclasses.replace(settings, score=dataclasses.replace(settings.score, precision="float32"))


@pytest.fixture(scope="module")
def registered(labelled, mlflow_server, tmp_path_factory):
    """The labelled corpus trained with tracking on and the model registered as NAME: (bundle, run)."""
    import mlflow

    from genreclf.train import run_train

    bundle = tmp_path_factory.mktemp("tracked") / "bundle"
    run_train(str(labelled.features), str(bundle), settings=_settings(mlflow_server.uri), register=NAME,
              **{**LABELLED_TRAINING, "epochs": 2})
    client = mlflow.MlflowClient(tracking_uri=mlflow_server.uri)
    version = client.get_model_version(NAME, "1")
    return bundle, client.get_run(version.run_id), client


@pytest.fixture(scope="module")
def bundle_scores(spark, labelled, registered, mlflow_server, tmp_path_factory):
    """The corpus scored by ``score --model BUNDLE`` (the registered model's directory), in float32."""
    from genreclf.formats.scoreoutput import read_scores
    from genreclf.score import run_score

    out = tmp_path_factory.mktemp("bundle-scores") / "scores"
    run_score(spark, str(registered[0]), str(out), inputs=[str(labelled.audio)], settings=_settings(mlflow_server.uri))
    return read_scores(str(out))


def test_training_logs_params_metrics_artifacts_and_a_registered_model(registered):
    bundle, run, client = registered
    info = json.loads((bundle / "bundle.json").read_text())
    history = json.loads((bundle / "history.json").read_text())
    params, metrics = run.data.params, run.data.metrics
    assert run.info.status == "FINISHED" and run.data.tags["genreclf.job"] == "train"
    assert params["train.epochs"] == "2" and params["train.seed"] == "1" and params["labels"] == "3"
    assert json.loads(params["recipe.n_fft"]) == info["recipe"]["n_fft"] and params["recipe.frontend"] == "stft"
    per_epoch = client.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in per_epoch] == [0, 1] and [m.value for m in per_epoch] == pytest.approx(history["val_loss"])
    report = json.loads((bundle / "metrics.json").read_text())
    assert metrics["val.tracks.accuracy"] == pytest.approx(report["tracks"]["accuracy"])
    assert metrics["temperature"] == pytest.approx(info["temperature"])
    reports = {os.path.basename(a.path) for a in client.list_artifacts(run.info.run_id, "reports")}
    assert {"bundle.json", "metrics.json", "history.json", "confusion_matrix.png", "training_curves.png"} <= reports
    version = client.get_model_version(NAME, "1")
    assert version.status == "READY" and version.run_id == run.info.run_id


def test_score_of_a_registry_uri_equals_score_of_the_bundle(spark, labelled, bundle_scores, mlflow_server, tmp_path):
    from genreclf.formats.scoreoutput import read_scores
    from genreclf.score import run_score

    run_score(spark, f"models:/{NAME}/1", str(tmp_path / "reg"), inputs=[str(labelled.audio)],
              settings=_settings(mlflow_server.uri))
    reg = read_scores(str(tmp_path / "reg")).set_index("track_id").sort_index()
    plain = bundle_scores.set_index("track_id").sort_index()
    assert list(reg.index) == list(plain.index) and list(reg["status"]) == list(plain["status"])
    ok = reg.index[reg["status"] == "ok"]
    assert len(ok) == 9
    np.testing.assert_allclose(np.stack(reg.loc[ok, "probability_vector"]),
                               np.stack(plain.loc[ok, "probability_vector"]), atol=1e-6)


def test_mlflow_spark_udf_on_paths_gives_the_scores_of_score(spark, registered, bundle_scores, mlflow_server):
    """``mlflow.pyfunc.spark_udf`` on a DataFrame of paths: one row per file, the probabilities score
    gives (within 1e-5), and a damaged file a row with its reason, as score's."""
    import mlflow.pyfunc

    bundle, _, _ = registered
    want = bundle_scores.set_index("path")
    mlflow.set_tracking_uri(mlflow_server.uri)
    udf = mlflow.pyfunc.spark_udf(spark, f"models:/{NAME}/1", env_manager="local",
                                  model_config={"precision": "float32"})
    paths = spark.createDataFrame([(p,) for p in sorted(want.index)], "path string")
    got = paths.select(udf("path").alias("p")).select("p.*").toPandas().set_index("path")  # the model says the path
    labels = json.loads((bundle / "bundle.json").read_text())["labels"]
    assert list(got.columns[-len(labels):]) == labels and sorted(got.index) == sorted(want.index)
    assert (got["status"] == want.loc[got.index, "status"]).all()
    for path in want.index[want["status"] == "ok"]:
        np.testing.assert_allclose(got.loc[path, labels].to_numpy(float), want.loc[path, "probability_vector"],
                                   atol=1e-5)
        assert got.loc[path, "genre"] == want.loc[path, "genre"]
    broken = want.index[want["status"] != "ok"]
    assert len(broken) == 2 and list(got.loc[broken, "error"]) == list(want.loc[broken, "error"])


def test_evaluate_of_a_registry_uri_logs_a_run_and_equals_the_bundles(labelled, registered, mlflow_server, tmp_path):
    from genreclf.evaluate import run_evaluate

    bundle, _, client = registered
    settings = _settings(mlflow_server.uri)
    with pytest.raises(ConfigError, match="give --output DIR"):
        run_evaluate(f"models:/{NAME}/1", str(labelled.features), settings=settings)
    reg = run_evaluate(f"models:/{NAME}/1", str(labelled.features), output=str(tmp_path / "e"), settings=settings)
    plain = run_evaluate(str(bundle), str(labelled.features), output=str(tmp_path / "p"), settings=Settings())
    assert reg["tracks"]["log_loss"] == pytest.approx(plain["tracks"]["log_loss"], abs=1e-6)
    runs = client.search_runs([client.get_experiment_by_name("tests").experiment_id],
                              filter_string="tags.`genreclf.job` = 'evaluate'")
    assert len(runs) == 1 and runs[0].data.params["model"] == f"models:/{NAME}/1"
    assert runs[0].data.metrics["tracks.log_loss"] == pytest.approx(reg["tracks"]["log_loss"])


def test_tracking_refuses_in_one_line_before_any_work(labelled, tmp_path, monkeypatch):
    """A server that does not answer, --register without tracking, a models:/ URI without a server."""
    from genreclf.score import run_score
    from genreclf.train import run_train

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ConfigError, match=r"the MLflow tracking server http://127.0.0.1:9 does not answer"):
        run_train(str(labelled.features), str(tmp_path / "m"), settings=_settings("http://127.0.0.1:9"), epochs=1)
    with pytest.raises(ConfigError, match="--register needs MLflow tracking"):
        run_train(str(labelled.features), str(tmp_path / "m"), register=NAME, epochs=1)
    with pytest.raises(ConfigError, match="is an MLflow model URI: set"):
        run_score(None, f"models:/{NAME}/1", str(tmp_path / "s"), inputs=[str(labelled.audio)])
    assert not (tmp_path / "m").exists() and not (tmp_path / "s").exists()

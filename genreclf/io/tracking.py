"""MLflow tracking and the model registry, when configured: ``[mlflow] tracking_uri``, else the
``MLFLOW_TRACKING_URI`` of the environment. Without either nothing is logged and MLflow is not
imported (it is an optional extra: ``pip install genreclf[mlflow]``).

The jobs hold a :class:`Tracker` either way (a run, or nothing); model URIs of the registry
(``models:/NAME/VERSION``, ``models:/NAME@alias``) and of runs (``runs:/ID/PATH``) are resolved
here to the local bundle directory the jobs read (:func:`fetch_model`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.request
import warnings

from genreclf.config import MlflowSettings
from genreclf.errors import ConfigError, GenreclfError

log = logging.getLogger(__name__)

#: URI schemes of MLflow models that --model accepts beside bundle locations.
MODEL_URI_SCHEMES = ("models:/", "runs:/")
#: Where the pyfunc model keeps the genreclf bundle among its artifacts (the key of ``artifacts``).
BUNDLE_ARTIFACT = "bundle"
#: MLflow's longest param value (characters).
MAX_PARAM = 6000


def is_model_uri(location: str) -> bool:
    """True for an MLflow model URI (``models:/...``, ``runs:/...``) rather than a bundle location."""
    return location.startswith(MODEL_URI_SCHEMES)


def _connect(settings: MlflowSettings):
    """mlflow, pointed at the tracking server in force, which answered; one line if it does not."""
    uri = settings.uri()
    try:
        import mlflow
    except ImportError:
        raise ConfigError(f"MLflow tracking is configured ({uri}) but mlflow is not installed: "
                          "pip install 'genreclf[mlflow]', or unset [mlflow] tracking_uri / MLFLOW_TRACKING_URI") from None
    if re.match(r"^https?://", uri):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).read()
        except OSError as e:
            raise ConfigError(f"the MLflow tracking server {uri} does not answer ({getattr(e, 'reason', e)}): start "
                              "it, or unset [mlflow] tracking_uri / MLFLOW_TRACKING_URI to run without tracking"
                              ) from None
    mlflow.set_tracking_uri(uri)
    return mlflow


@contextlib.contextmanager
def _said_once(what: str):
    """MLflow's failures as one line naming what was being logged."""
    try:
        yield
    except GenreclfError:
        raise
    except Exception as e:  # MlflowException, requests' errors: not a bug of ours
        if type(e).__module__.startswith(("mlflow", "requests", "urllib3")):
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise GenreclfError(f"MLflow: {what} failed: {first}") from None
        raise


class Tracker:
    """An MLflow run to log to, or nothing when tracking is off (every method is then a no-op)."""

    def __init__(self, mlflow=None, run_id: str | None = None):
        self.mlflow, self.run_id = mlflow, run_id

    @property
    def active(self) -> bool:
        return self.mlflow is not None

    def params(self, params: dict) -> None:
        """Flat ``{key: value}`` (nested dicts joined with "."), each value at most MLflow's length."""
        if self.active:
            flat = {k: (v if isinstance(v, str) else json.dumps(v))[:MAX_PARAM] for k, v in _flatten(params).items()}
            with _said_once("logging params"):
                self.mlflow.log_params(flat)

    def metrics(self, metrics: dict, step: int | None = None) -> None:
        """The numeric values of ``metrics`` (nested dicts joined with "."); others are left out."""
        if self.active:
            numbers = {k: float(v) for k, v in _flatten(metrics).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            with _said_once("logging metrics"):
                self.mlflow.log_metrics(numbers, step=step)

    def history(self, history: dict) -> None:
        """Per-epoch lists ``{name: [value per epoch]}`` as metrics with the epoch as step."""
        for i in range(max((len(v) for v in history.values()), default=0)):
            self.metrics({k: v[i] for k, v in history.items() if i < len(v)}, step=i)

    def artifacts(self, files: list, path: str | None = None) -> None:
        """Local ``files`` as the run's artifacts (under ``path``)."""
        if self.active:
            with _said_once("logging artifacts"):
                for file in files:
                    self.mlflow.log_artifact(file, artifact_path=path)

    def log_model(self, python_model: str, bundle_dir: str, model_config: dict, signature=None,
                  register: str | None = None):
        """``bundle_dir`` as an MLflow pyfunc model of this run (the code file ``python_model`` applies it), registered
        as ``register`` when given; returns the registered version (or None)."""
        with _said_once("logging the model"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*input example", category=UserWarning)  # one needs audio
            info = self.mlflow.pyfunc.log_model(name="model", python_model=python_model,
                                                artifacts={BUNDLE_ARTIFACT: bundle_dir}, model_config=model_config,
                                                signature=signature, registered_model_name=register or None,
                                                pip_requirements=_requirements())
        version = getattr(info, "registered_model_version", None)
        if register:
            log.info("mlflow: registered %s version %s (score --model models:/%s/%s)", register, version, register,
                     version)
        return version


def _requirements() -> list:
    """The model's pip requirements: this genreclf and what it pins (read from its metadata)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("genreclf")
    except metadata.PackageNotFoundError:
        return []
    pinned = [r.split(";")[0].strip() for r in dist.requires or [] if "extra ==" not in r]
    return [f"genreclf=={dist.version}", *pinned]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


@contextlib.contextmanager
def start(settings: MlflowSettings, run_name: str, *, tags: dict | None = None):
    """A :class:`Tracker` for one MLflow run, nested in the run this process has open if any (a
    cross-validation's folds), ended FINISHED, or FAILED when the body raises; a Tracker that logs
    nothing when tracking is off."""
    if not settings.uri():
        yield Tracker()
        return
    mlflow = _connect(settings)
    with _said_once(f"starting a run at {settings.uri()}"):
        nested = mlflow.active_run() is not None
        if not nested:
            mlflow.set_experiment(settings.experiment_name())
        run = mlflow.start_run(run_name=run_name, nested=nested, tags=tags)
    log.info("mlflow: run %s (%s) in experiment %s at %s", run.info.run_id, run_name, settings.experiment_name(),
             settings.uri())
    status = "FAILED"
    try:
        yield Tracker(mlflow, run.info.run_id)
        status = "FINISHED"
    finally:
        mlflow.end_run(status=status)


def fetch_model(uri: str, settings: MlflowSettings) -> str:
    """The local bundle directory of an MLflow model URI (``models:/NAME/VERSION``, ``models:/NAME@alias``,
    ``runs:/ID/PATH``) logged by genreclf: downloaded once per process, removed at its exit."""
    if not settings.uri():
        raise ConfigError(f"--model {uri} is an MLflow model URI: set [mlflow] tracking_uri or MLFLOW_TRACKING_URI "
                          "to the server that holds it")
    if uri in _FETCHED:
        return _FETCHED[uri]
    mlflow = _connect(settings)
    scratch = tempfile.mkdtemp(prefix="genreclf-mlflow-model-")
    _SCRATCH.append(scratch)
    with _said_once(f"fetching {uri}"):
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=scratch)
    bundle = _bundle_in(local)
    if bundle is None:
        raise ConfigError(f"{uri} is not a genreclf model (no {BUNDLE_ARTIFACT} artifact with bundle.json): "
                          "give a model logged by genreclf train")
    log.info("model %s -> %s", uri, bundle)
    _FETCHED[uri] = bundle
    return bundle


def _bundle_in(model_dir: str) -> str | None:
    """The bundle directory inside a downloaded pyfunc model, from its MLmodel's artifacts."""
    import yaml

    try:
        with open(os.path.join(model_dir, "MLmodel")) as f:
            flavor = (yaml.safe_load(f).get("flavors") or {}).get("python_function") or {}
    except OSError:
        return None
    path = ((flavor.get("artifacts") or {}).get(BUNDLE_ARTIFACT) or {}).get("path")
    found = os.path.join(model_dir, path) if path else None
    return found if found and os.path.isfile(os.path.join(found, "bundle.json")) else None


#: {model URI: its local bundle} fetched by this process, and the scratch directories to remove at exit.
_FETCHED: dict = {}
_SCRATCH: list = []


def _remove_scratch():
    for d in _SCRATCH:
        shutil.rmtree(d, ignore_errors=True)


atexit.register(_remove_scratch)

"""Per-epoch checkpoints of a training run, so that ``train --resume`` continues a killed run.

Beside the bundle, in ``.BUNDLE.checkpoint/``: after each epoch the model's weights and its
optimizer's state (``epoch-EEEE.weights.h5``, ``epoch-EEEE.optimizer.npz``) and, when the monitored
loss improved, the best weights so far
(``best-EEEE.weights.h5``) are written, then the checkpoint is committed by one atomic write of
``state.json`` naming them, with the epoch, the history so far, early stopping's state and the
run's fingerprint (recipe, features commit, settings, labels, split, replicas); files it no longer
names are then removed. A resumed run must have the same fingerprint (what differs is named).
The shuffle order needs no state: an epoch's order is a function of the seed and the epoch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile

from genreclf.errors import ConfigError, DamagedInputError
from genreclf.io import storage

log = logging.getLogger(__name__)

STATE_FILE = "state.json"


def location(model_out: str) -> str:
    """The checkpoint directory of a bundle location (hidden, beside it, like its lock)."""
    return storage.sibling(model_out, "checkpoint")


def fingerprint(recipe, features_run: str, settings: dict, labels: list, val_ids: list, replicas: int) -> dict:
    """What a resumed run must share with the interrupted one."""
    return {"recipe": recipe.to_dict(), "features_commit": features_run, "settings": settings, "labels": list(labels),
            "split": hashlib.sha256(json.dumps(sorted(val_ids)).encode()).hexdigest()[:16], "replicas": replicas}


def load(where: str, expected: dict) -> dict:
    """The committed state of a checkpoint, checked against the fingerprint ``expected``."""
    try:
        state = json.loads(storage.read_text(storage.join(where, STATE_FILE)))
    except FileNotFoundError:
        raise ConfigError(f"--resume: no checkpoint at {where} (the run to resume never finished an epoch): "
                          "run without --resume") from None
    except ValueError:
        raise DamagedInputError(f"checkpoint {storage.join(where, STATE_FILE)} is not valid JSON: run without "
                                "--resume to start over") from None
    if not isinstance(state, dict) or not isinstance(state.get("fingerprint"), dict):
        raise DamagedInputError(f"checkpoint {storage.join(where, STATE_FILE)} lacks the fields a checkpoint has: "
                                "run without --resume to start over")
    differ = sorted(k for k in expected if state["fingerprint"].get(k) != expected[k])
    if "settings" in differ:
        was, now = state["fingerprint"]["settings"], expected["settings"]
        differ[differ.index("settings")] = "settings (" + ", ".join(
            f"{k}: {was.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(was) | set(now)) if was.get(k) != now.get(k)) + ")"
    if differ:
        raise ConfigError(f"--resume: the checkpoint at {where} was made by a run with another {', '.join(differ)}; "
                          "resume with the same features and settings, or run without --resume to start over")
    return state


def fetch(where: str, name: str, scratch: str) -> str:
    """A local copy of a checkpoint file in ``scratch`` (Keras reads local paths)."""
    local = os.path.join(scratch, name)
    storage.download(storage.join(where, name), local)
    return local


def epoch_checkpoint(where: str, print_: dict, early_stopping, state: dict | None):
    """A Keras callback committing a checkpoint at each epoch's end (after ``early_stopping``'s own
    update; ``state``: the checkpoint resumed from, whose history it extends)."""
    import keras

    history = {k: list(v) for k, v in (state or {}).get("history", {}).items()}
    best_file = (state or {}).get("best_weights")

    class Checkpoint(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            nonlocal best_file
            for key, value in (logs or {}).items():
                history.setdefault(key, []).append(float(value))
            import numpy as np

            with tempfile.TemporaryDirectory(prefix="genreclf-ckpt-") as scratch:
                model_name, optimizer_name = f"epoch-{epoch + 1:04d}.weights.h5", f"epoch-{epoch + 1:04d}.optimizer.npz"
                self.model.save_weights(os.path.join(scratch, model_name))
                np.savez(os.path.join(scratch, optimizer_name),
                         *[np.asarray(v) for v in self.model.optimizer.variables],
                         **{f"rng_{i}": np.asarray(g.state) for i, g in enumerate(_seed_generators(self.model))})
                names = [model_name, optimizer_name]
                if early_stopping.best_epoch == epoch or best_file is None:
                    best_file = f"best-{epoch + 1:04d}.weights.h5"
                    self.model.save_weights(os.path.join(scratch, best_file))
                    names.append(best_file)
                for name in names:
                    with open(os.path.join(scratch, name), "rb") as f:
                        storage.write_bytes(storage.join(where, name), f.read())
            record = {"epoch": epoch + 1, "model": model_name, "optimizer": optimizer_name, "best_weights": best_file,
                      "best": None if early_stopping.best is None else float(early_stopping.best),
                      "best_epoch": int(early_stopping.best_epoch), "wait": int(early_stopping.wait),
                      "history": history, "fingerprint": print_}
            storage.write_text(storage.join(where, STATE_FILE), json.dumps(record, indent=1))  # the commit
            stale = [e.path for e in storage.list_dir(where)
                     if e.base_name not in (STATE_FILE, model_name, optimizer_name, best_file)
                     and not e.base_name.startswith(".")]
            storage.delete_files(where, stale)
            log.info("train: checkpoint of epoch %d committed to %s", epoch + 1, where)

    return Checkpoint()


def restore(model, where: str, state: dict):
    """The interrupted run's weights, optimizer state and random state into ``model`` (built and
    compiled as at the start); returns the best weights so far, for early stopping."""
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="genreclf-ckpt-") as scratch:
        with _damaged(where, state.get("best_weights")):
            model.load_weights(fetch(where, state["best_weights"], scratch))
        best = model.get_weights()
        with _damaged(where, state.get("model")):
            model.load_weights(fetch(where, state["model"], scratch))  # then the last epoch's: to go on from
        model.optimizer.build(model.trainable_variables)
        with _damaged(where, state.get("optimizer")), np.load(fetch(where, state["optimizer"], scratch)) as saved:
            values = [saved[name] for name in sorted((f for f in saved.files if f.startswith("arr_")),
                                                    key=lambda f: int(f[4:]))]
            rng = [saved[f"rng_{i}"] for i in range(len(_seed_generators(model)))]
    if len(values) != len(model.optimizer.variables):
        raise DamagedInputError(f"checkpoint {where}: {state['optimizer']} holds {len(values)} optimizer variables, "
                                f"the model's optimizer {len(model.optimizer.variables)}: run without --resume")
    for variable, value in zip(model.optimizer.variables, values):
        variable.assign(value)
    for generator, value in zip(_seed_generators(model), rng):  # dropout draws on where it stopped
        generator.state.assign(value)
    return best


@contextlib.contextmanager
def _damaged(where: str, name):
    """A checkpoint file that is missing, truncated or not what its name says: one line naming it
    (h5py, numpy and Keras raise many types for a damaged file)."""
    try:
        yield
    except Exception as e:
        what = "missing" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__})"
        raise DamagedInputError(f"checkpoint file {storage.join(where, str(name))} is {what}: the checkpoint is "
                                "damaged; run without --resume to start over") from None


def _seed_generators(model) -> list:
    """The random state of the model's layers (Dropout's masks), in layer order."""
    return [layer.seed_generator for layer in model.layers if getattr(layer, "seed_generator", None) is not None]


def resumable_early_stopping(state: dict | None, best_weights, **kwargs):
    """EarlyStopping that, resumed, starts from the interrupted run's best, wait and best weights."""
    import keras

    class Resumable(keras.callbacks.EarlyStopping):
        def on_train_begin(self, logs=None):
            super().on_train_begin(logs)
            if state is not None:
                self.best, self.wait, self.best_epoch = state["best"], state["wait"], state["best_epoch"]
                self.best_weights = best_weights

    return Resumable(**kwargs)

"""Which tracks and labels a fit uses, and their train/validation split: by track, never by window,
stratified by label, optionally grouped.

A track's windows overlap by half and are near-duplicates, so splitting windows would leak. When a
group column (artist or album) is given, all tracks of a group land on the same side.

Cross-validation folds use scikit-learn's ``StratifiedGroupKFold`` (genreclf.crossval). This
hold-out split stays ours because sklearn has no stratified *group* split by an arbitrary fraction
(``GroupShuffleSplit`` ignores labels; ``StratifiedGroupKFold`` only cuts 1/K and may leave a
label without a validation group), and early stopping and the temperature need every label that
has two or more groups represented.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from genreclf.config import Settings
from genreclf.errors import ConfigError
from genreclf.formats.schema import STATUS_OK

log = logging.getLogger(__name__)


def choose_labels(tracks, vocabulary: str, settings: Settings) -> list:
    """The label list in output order: sorted labels of the data, or the configured genres."""
    if vocabulary == "data":
        labels = sorted(tracks.loc[(tracks["status"] == STATUS_OK) & tracks["label"].notna(), "label"].unique())
    else:  # "conf"; TrainSettings has checked the choice
        labels = list(settings.genres)
    if len(labels) < 2:
        raise ConfigError(f"need at least two labels to train, found {labels}; featurize with --labels")
    return labels


def usable_tracks(tracks: pd.DataFrame, labels: list) -> pd.DataFrame:
    """Tracks that are ok, labelled, and whose label the model knows."""
    ok = tracks[(tracks["status"] == STATUS_OK) & tracks["label"].notna()]
    unknown = ~ok["label"].isin(labels)
    if unknown.any():
        log.warning("%d tracks have labels the model does not know (%s): left out", int(unknown.sum()),
                    ", ".join(sorted(ok.loc[unknown, "label"].unique())[:5]))
    return ok[~unknown]


def split_tracks(tracks: pd.DataFrame, val_fraction: float, seed: int, group_col: str | None = None):
    """Return (train_ids, val_ids): sorted lists of ``track_id``.

    ``tracks`` needs ``track_id`` and ``label``. Within each label, whole groups (or tracks) are
    shuffled with ``seed`` and moved to validation until it holds ``val_fraction`` of the label's
    tracks; every label with at least two groups gets at least one validation group.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    table = tracks[["track_id", "label"]].copy()
    groups = tracks[group_col] if group_col and group_col in tracks else None
    table["group"] = groups.fillna(tracks["track_id"]) if groups is not None else tracks["track_id"]
    table["group"] = table["group"].astype(str)
    # A group spanning several labels goes with its most common label.
    group_label = table.groupby("group")["label"].agg(lambda s: s.value_counts().index[0])
    group_size = table.groupby("group").size()
    rng = np.random.default_rng(seed)
    val_groups = set()
    for label in sorted(group_label.unique()):
        members = sorted(group_label.index[group_label == label])
        rng.shuffle(members)
        total = int(group_size[members].sum())
        target = val_fraction * total
        taken = 0
        for g in members:
            if taken >= target or (len(members) < 2) or (taken and taken + group_size[g] > target + 0.5):
                break
            val_groups.add(g)
            taken += int(group_size[g])
        if val_fraction > 0 and taken == 0 and len(members) >= 2:
            val_groups.add(members[0])
    is_val = table["group"].isin(val_groups)
    return sorted(table.loc[~is_val, "track_id"]), sorted(table.loc[is_val, "track_id"])

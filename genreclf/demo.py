"""The embedded default: a small synthetic corpus to run every job on, with nothing downloaded.

    python -m genreclf.demo corpus --out demo-output/corpus

writes five clearly different styles as real mp3s (mixed sample rates, bitrates, channel counts),
a few broken files, and ``labels.csv`` (path -> genre) beside them.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import time

from genreclf.audio.synth import STYLES, make_corpus
from genreclf.io import storage
from genreclf.io.spark import setup_logging

log = logging.getLogger("genreclf.demo")


def write_corpus(out: str, tracks_per_style: int, duration_s: float) -> str:
    """Make the corpus (skipped when ``labels.csv`` already says it is complete); returns labels.csv."""
    labels_csv = os.path.join(out, "labels.csv")
    if storage.is_file(labels_csv):
        if len(storage.read_text(labels_csv).splitlines()) - 1 == tracks_per_style * len(STYLES):
            log.info("demo corpus already in %s", out)
            return labels_csv
    started = time.time()
    labels = make_corpus(out, tracks_per_style=tracks_per_style, duration_s=duration_s)
    text = io.StringIO()
    w = csv.writer(text)
    w.writerow(["path", "genre"])
    w.writerows(sorted(labels.items()))
    storage.write_text(labels_csv, text.getvalue())
    log.info("demo corpus: %d tracks in %d styles (%s) + 4 broken files in %s (%.0f s)", len(labels),
             len(STYLES), ", ".join(STYLES), out, time.time() - started)
    return labels_csv


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m genreclf.demo", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("corpus", help="write the synthetic demo corpus")
    c.add_argument("--out", default="demo-output/corpus")
    c.add_argument("--tracks-per-style", type=int, default=8)
    c.add_argument("--duration", type=float, default=30.0, help="seconds per track")
    args = p.parse_args(argv)
    setup_logging()
    write_corpus(args.out, args.tracks_per_style, args.duration)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

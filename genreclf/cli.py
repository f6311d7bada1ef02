"""Command-line parsers of the jobs and their common ``main``, kept apart from the logic so that
``--help`` needs no Spark and every job reports errors the same way (message, exit code 2)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import os
import signal

from genreclf.config import CHOICES, SECTIONS, field_docs, override

EPILOG = ("Settings: defaults <- conf/genreclf.toml <- --conf <- flags (python -m genreclf.config shows them). "
          "Docs: README.md, docs/.")


def featurize_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spark-submit.sh featurize",
        description="Decode audio files, cut windows (the recipe's: 3 s every 1.5 s by default) and write their "
                    "features to a petastorm dataset (DIR/windows), with one status row per input file (DIR/tracks).",
        epilog=EPILOG)
    p.add_argument("--input", nargs="+", required=True, metavar="PATH",
                   help="directories (recursive), globs, audio files, or catalogue CSVs with a 'path' column "
                        "(optional 'track_id', 'genre')")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory or URL")
    p.add_argument("--labels", metavar="CSV",
                   help="labels: a CSV mapping 'path' (or 'file') or 'track_id' to 'genre' (or 'label'), optionally "
                        "'artist' or 'album' (kept on one side of splits), or FMA's tracks.csv")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace an existing output")
    mode.add_argument("--incremental", action="store_true",
                      help="add to an existing output: skip files already ok with the same size and mtime")
    add_break_lock(p)
    add_conf(p)
    return p


def add_break_lock(p: argparse.ArgumentParser) -> None:
    """--break-lock, as every job that writes an output takes it."""
    p.add_argument("--break-lock", action="store_true",
                   help="take over the output's lock when its holder is gone (dead pid on this host, or older "
                        "than [storage] lock_stale_after_s); a live writer's lock is never broken")


def score_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="spark-submit.sh score",
        description="Apply a model bundle to raw audio (--input) or a featurize output (--features): one row per "
                    "file in DIR/scores with the top genre, its confidence and every genre's probability (the mean "
                    "of the track's window predictions).",
        epilog=EPILOG)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", nargs="+", metavar="PATH", help="audio: directories, globs, files or catalogue CSVs")
    src.add_argument("--features", metavar="DIR", help="an existing featurize output")
    p.add_argument("--model", required=True, metavar="BUNDLE",
                   help="model bundle written by train (a path or URL); an MLflow model logged by train "
                        "(models:/NAME/VERSION, models:/NAME@alias, runs:/ID/model; [mlflow] tracking_uri or "
                        "MLFLOW_TRACKING_URI); or pretrained:musicnn-msd / pretrained:musicnn-mtt (the musicnn "
                        "tagger: 50 tags, no labels needed)")
    p.add_argument("--output", required=True, metavar="DIR", help="output directory or URL")
    p.add_argument("--csv", action="store_true", help="also write DIR/submission.csv (crowdAI layout)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing scores (atomically)")
    mode.add_argument("--incremental", action="store_true",
                      help="keep the rows of unchanged files (same path, size, mtime, bundle and settings), score "
                           "new, changed and failed files, drop rows of files no longer listed; replaced atomically")
    add_setting_flags(p, "score", ["precision"])
    p.add_argument("--no-calibration", dest="calibrate", action="store_false",
                   help="ignore the bundle's temperature: the reference's plain mean of window softmaxes")
    add_break_lock(p)
    add_conf(p)
    return p


#: The dest prefix of a flag that sets a setting: ``setting:SECTION:KEY`` (:func:`add_setting_flags`).
SETTING_DEST = "setting:"


def add_setting_flags(p, section: str, keys=None, *, metavars: dict | None = None, group=None) -> None:
    """A flag ``--KEY`` for each key of ``[section]`` (every key when None): its help is the setting's
    comment in genreclf/config/sections.py (written once there), its choices the setting's vocabulary, its
    type the default's; :func:`run_main` lays the values given over the settings (config.override)."""
    defaults, docs, choices = SECTIONS[section](), field_docs(SECTIONS[section]), CHOICES.get(section, {})
    for key in keys or [f.name for f in dataclasses.fields(SECTIONS[section])]:
        default = getattr(defaults, key)
        kwargs = {"choices": choices[key]} if key in choices else {
            "type": type(default), "metavar": (metavars or {}).get(key, key.upper())}
        (group or p).add_argument(f"--{key.replace('_', '-')}", dest=f"{SETTING_DEST}{section}:{key}",
                                  help=f"{docs.get(key, '')} ([{section}] {key}, default {default!r})", **kwargs)


def setting_values(args) -> dict:
    """{section: {key: value}} of the setting flags given on the command line."""
    out: dict = {}
    for dest, value in vars(args).items():
        if dest.startswith(SETTING_DEST) and value is not None:
            section, key = dest[len(SETTING_DEST):].split(":")
            out.setdefault(section, {})[key] = value
    return out


def add_conf(p: argparse.ArgumentParser) -> None:
    p.add_argument("--conf", metavar="TOML",
                   help="settings layered on conf/genreclf.toml: a preset (conf/quality.toml, conf/gpu.toml) or a file "
                        "of your own, listing only what it changes; python -m genreclf.config shows the result")


#: What a rerun after an interrupt does, by default (train says how to resume from its checkpoint).
RERUN_HINT = "rerun the same command to resume: what finished tasks wrote is kept"


def _interrupted(log, signum: int, hint: str) -> int:
    from genreclf.io.interrupts import name

    log.error("interrupted by %s: stopped, the lock released, the previous output is whole; %s", name(signum), hint)
    return 128 + signum


def run_main(parser: argparse.ArgumentParser, body, argv=None, *, spark_app: str | None = None,
             writes: tuple = (), rerun_hint: str = RERUN_HINT) -> int:
    """Parse arguments, set up logging and settings, run ``body(args, settings[, spark])``.

    The locations named by the ``writes`` arguments are checked writable first, and with
    ``spark_app`` the body gets a SparkSession started on its first use (and always stopped). A
    :class:`GenreclfError` is logged as one line and gives exit code 2; SIGINT and SIGTERM stop the
    job in order (its ``finally`` blocks run) and give one line and 130 / 143.
    """
    from genreclf.io.interrupts import interrupts

    with interrupts():
        return _run_main(parser, body, argv, spark_app, writes, rerun_hint)


def _run_main(parser, body, argv, spark_app, writes, rerun_hint) -> int:
    from genreclf.config import load_settings
    from genreclf.errors import GenreclfError, Interrupted
    from genreclf.io.spark import LazySpark, setup_logging

    parser.add_argument("--verbose", action="store_true",
                        help="debug logs, and the native start-up lines of TensorFlow in every process")
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ["GENRECLF_VERBOSE"] = "1"
    setup_logging("DEBUG" if args.verbose else None)
    log = logging.getLogger(f"genreclf.{parser.prog.split()[-1]}")
    try:
        from genreclf.io import storage

        settings = load_settings(getattr(args, "conf", None))  # a URL too: read through storage
        for section, values in setting_values(args).items():
            settings = override(settings, section, **values)
        storage.configure(settings.storage.to_dict())
        for name in writes:
            if getattr(args, name, None):
                storage.check_writable(getattr(args, name), f"--{name.replace('_', '-')}")
        if spark_app is None:
            body(args, settings)
            return 0
        spark = LazySpark(spark_app)  # started when the body first needs it: tasks to run
        try:
            body(args, settings, spark)
        except BaseException as e:
            with contextlib.suppress(Exception):  # what stopped the body is what is reported
                spark.stop(interrupted=isinstance(e, (Interrupted, KeyboardInterrupt)))
            raise
        spark.stop()
        return 0
    except Interrupted as e:
        return _interrupted(log, e.signum, rerun_hint)
    except KeyboardInterrupt:  # raised by a handler other than ours (a library's)
        return _interrupted(log, signal.SIGINT, rerun_hint)
    except GenreclfError as e:
        log.error("%s", e)
        return 2
    except Exception:  # a bug: the traceback once, with what the user can do
        log.exception("internal error (not a problem with your input or settings): a rerun is safe, since outputs "
                      "are committed only when complete; please report it with the traceback below")
        return 1


def print_settings(argv=None) -> int:
    """Print the settings in force: ``python -m genreclf.config [--conf FILE]`` (FILE a path or URL)."""
    import sys

    from genreclf.config import describe, load_settings
    from genreclf.errors import GenreclfError
    from genreclf.io import storage  # noqa: F401 (lends config its reader: --conf may be a URL)

    p = argparse.ArgumentParser(prog="python -m genreclf.config",
                                description="Print every setting in force (defaults <- conf/genreclf.toml <- --conf) "
                                            "as TOML, each key with its meaning.")
    p.add_argument("--conf", metavar="TOML", help="a preset or settings file layered on conf/genreclf.toml")
    args = p.parse_args(argv)
    try:
        print(describe(load_settings(args.conf)), flush=True)
    except GenreclfError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # read by `head` or a pager that quit: nothing more to say, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
    return 0

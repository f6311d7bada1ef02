"""The score stage: a model bundle applied to raw audio or featurize output, one row per file.
:mod:`.driver` plans, ships the bundle and commits; :mod:`.tasks` is what each Spark task runs."""

from genreclf.score.driver import format_summary, run_score

__all__ = ["format_summary", "run_score"]

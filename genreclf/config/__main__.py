"""``python -m genreclf.config [--conf FILE]``: every setting in force, as TOML, each key with its meaning.

An entry point like ``jobs/*.py`` (imported by nothing): the command lives in :mod:`genreclf.cli`, which
reads ``--conf`` through the storage layer, so a preset may be a URL here as in the jobs.
"""

from genreclf.cli import print_settings

raise SystemExit(print_settings())

"""Settings in layers: the dataclasses' defaults <- ``conf/genreclf.toml`` <- ``--conf FILE`` <- flags,
each layer listing only what it changes and checked as it is laid; and the settings described back
(every key with its meaning: ``python -m genreclf.config``)."""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import re
import tomllib

from genreclf.config.sections import FMA_GENRES, SECTIONS, Settings
from genreclf.errors import ConfigError

#: This installation's settings file, layered on the defaults when present.
DEFAULT_CONF = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "conf", "genreclf.toml")


def override(settings: Settings, section: str, **values) -> Settings:
    """``settings`` with keys of ``[section]`` replaced: the last layer (CLI flags, a caller's keywords),
    the one way one is applied. None values are skipped (a flag not given); an unknown key is refused
    and the values are checked as a settings file's are."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return settings
    known = {f.name for f in dataclasses.fields(SECTIONS[section])}
    if set(values) - known:
        raise ConfigError(f"unknown [{section}] setting(s) {sorted(set(values) - known)}; known: {sorted(known)}")
    return dataclasses.replace(settings, **{section: dataclasses.replace(getattr(settings, section), **values)})


#: The reader of settings files (location -> text) lent by the storage layer, which sits above config:
#: genreclf.io.storage hands its ``read_text`` over when imported (as every job and stage does), so that
#: a layer may be any location it reads (s3://, gs://, hdfs://...). Until then files are read locally.
_LENT: list = []


def use_reader(read_text) -> None:
    """Read settings files with ``read_text`` from now on (called by genreclf.io.storage on import)."""
    _LENT[:] = [read_text]


def _read_text(path: str) -> str:
    if _LENT:
        return _LENT[0](path)
    if "://" in path:
        raise ConfigError(f"config file {path}: a URL is read through the storage layer; import genreclf.io.storage "
                          "first (every job does)")
    with open(path, encoding="utf-8") as f:
        return f.read()


def _read_layer(path: str) -> dict:
    """One settings file's tables, checked for unknown sections and keys."""
    try:
        data = tomllib.loads(_read_text(path))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    unknown = set(data) - set(SECTIONS) - {"labels", BASE_KEY}
    if unknown:
        raise ConfigError(f"{path}: unknown sections {sorted(unknown)}; known: {sorted([*SECTIONS, 'labels'])} "
                          f"(and {BASE_KEY} = FILE before them)")
    if BASE_KEY in data and not isinstance(data[BASE_KEY], str):
        raise ConfigError(f"{path}: {BASE_KEY} = {data[BASE_KEY]!r} must be the path of a settings file (relative to "
                          "this one's directory)")
    for name, table in data.items():
        if name == BASE_KEY:
            continue
        known = {f.name for f in dataclasses.fields(SECTIONS[name])} if name in SECTIONS else {"genres"}
        if set(table) - known:
            raise ConfigError(f"{path}: [{name}] has unknown keys {sorted(set(table) - known)}; known: {sorted(known)}")
    return data


#: A settings file's top-level key naming the file it changes (read first, itself perhaps on a base):
#: a preset that differs from another in a few keys lists only those.
BASE_KEY = "base"


def _with_bases(path: str, seen: tuple = ()) -> dict:
    """The tables of ``path`` laid over those of its base file, and its base's base ..."""
    path = path if "://" in path else os.path.abspath(path)
    if path in seen:
        raise ConfigError(f"config file {path}: {BASE_KEY} files form a loop ({' -> '.join([*seen, path])})")
    data = _read_layer(path)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    beside = (posixpath.join(posixpath.dirname(path), base) if "://" in path
              else os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(path)), base)))
    merged = {name: dict(table) for name, table in _with_bases(beside, (*seen, path)).items()}
    for name, table in data.items():
        merged.setdefault(name, {}).update(table)
    return merged


def load_settings(path: str | None = None) -> Settings:
    """The settings in layers, each listing only what it changes: the dataclasses' defaults, then
    ``conf/genreclf.toml`` (this installation's changes) when present, then ``path`` (``--conf``: a
    preset or a run's own file, a local path or URL). CLI flags are the last layer (:func:`override`)."""
    layers = [DEFAULT_CONF] if os.path.exists(DEFAULT_CONF) else []
    if path and not (os.path.exists(path) and layers and os.path.samefile(path, DEFAULT_CONF)):
        layers.append(path)
    merged: dict = {}
    for layer in layers:
        for name, table in _with_bases(layer).items():
            merged.setdefault(name, {}).update(table)
    sections = {name: cls(**merged.get(name, {})) for name, cls in SECTIONS.items()}
    return Settings(**sections, genres=tuple(merged.get("labels", {}).get("genres", FMA_GENRES)))


def field_docs(cls) -> dict:
    """{key: the comment beside its default in ``cls``'s source}: each setting's meaning, written once."""
    import inspect

    docs = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"^    (\w+): [^=]+= .*?  # (.*)$", line)
        if m:
            docs[m.group(1)] = m.group(2)
    return docs


def describe(settings: Settings) -> str:
    """``settings`` as a complete TOML file, each key with its meaning (``python -m genreclf.config``)."""
    out = []
    for name, cls in SECTIONS.items():
        section, docs = getattr(settings, name), field_docs(cls)
        out.append(f"[{name}]")
        for f in dataclasses.fields(cls):
            value = json.dumps(getattr(section, f.name))
            doc = docs.get(f.name, "")
            out.append(f"{f.name} = {value}" + (f"  # {doc}" if doc else ""))
        out.append("")
    out += ["[labels]", "genres = " + json.dumps(list(settings.genres)), ""]
    return "\n".join(out)

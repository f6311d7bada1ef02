"""Locations as strings: local paths and URLs converted, joined and named, hidden siblings named,
credentials redacted and refused. No I/O."""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from urllib.parse import urlparse


from genreclf.errors import ConfigError



def is_url(location: str) -> bool:
    return bool(re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", location))


def is_local(location: str) -> bool:
    return not is_url(location) or location.startswith("file://")


def to_url(location: str) -> str:
    """A local path becomes an absolute ``file://`` URL; URLs pass through (without a trailing /)."""
    if is_url(location):
        return location.rstrip("/") if not location.endswith("://") else location
    return "file://" + os.path.abspath(os.path.expanduser(location))


def to_location(location: str) -> str:
    """What tables hold: an absolute local path for local files (``file://`` stripped), else the URL."""
    if not is_url(location):
        return os.path.abspath(os.path.expanduser(location))
    if location.startswith("file://"):
        return urlparse(location).path
    return location.rstrip("/")


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *parts])


def parent(location: str) -> str:
    if not is_url(location):
        return os.path.dirname(os.path.abspath(location))
    scheme, rest = location.split("://", 1)
    return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"


def basename(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def resolve(base_dir: str, relative: str) -> str:
    """``relative`` (a path in a CSV) against the CSV's directory; absolute paths and URLs stay."""
    if is_url(relative):
        return to_location(relative)
    if not is_url(base_dir):
        return os.path.normpath(os.path.join(base_dir, os.path.expanduser(relative)))
    scheme, rest = base_dir.split("://", 1)
    if relative.startswith("/"):
        return f"{scheme}://{rest.split('/', 1)[0]}{posixpath.normpath(relative)}"
    return f"{scheme}://{posixpath.normpath(posixpath.join(rest, relative))}"


def relative(location: str, root: str) -> str:
    if not is_url(location):
        return os.path.relpath(location, root)
    return posixpath.relpath(location.split("://", 1)[1], root.split("://", 1)[1])


#: user:password@ in a URL: never printed (:func:`redact`), and refused as a location.
_CREDENTIAL = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]*:[^/@\s]*@")
CREDENTIAL_VARIABLES = "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (s3://), GOOGLE_APPLICATION_CREDENTIALS (gs://)"


def redact(text: str) -> str:
    """``text`` with the user:password of every URL in it replaced by ``***``: what logs print."""
    return _CREDENTIAL.sub(r"\1***@", text)


def refuse_credentials(*locations) -> None:
    """Refuse a location holding a credential: it would land in logs, records and process lists."""
    for url in filter(None, locations):
        if is_url(url) and _CREDENTIAL.search(url):
            raise ConfigError(f"{redact(url)} has a credential inside it: give it in the environment instead "
                              f"({CREDENTIAL_VARIABLES}) and name the location without it")


def sibling(location: str, kind: str) -> str:
    """The hidden sibling ``.NAME.KIND`` beside a location, the one way such names are made: what
    belongs to an output without being part of it, which every reader skips (names starting with
    '.'): its lock (``lock``), checkpoint (``checkpoint``), a staged copy (``TAG.tmp``), an old copy
    set aside (``TAG.old.tmp``), a partial download (``TAG.partial``)."""
    location = to_location(location)
    return join(parent(location), f".{basename(location)}.{kind}")


def hidden_name(location: str, tag: str = "") -> str:
    """A hidden sibling of ``location`` for writing before the commit (``.NAME.TAG.tmp``)."""
    return sibling(location, f"{tag or uuid.uuid4().hex[:8]}.tmp")

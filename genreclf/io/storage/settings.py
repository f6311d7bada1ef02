"""[storage] settings and the state made from them: the options in force in this process and the
filesystems opened under them."""

from __future__ import annotations

import dataclasses
import os
import re
import threading
from dataclasses import dataclass


from genreclf.errors import check_fields



@dataclass(frozen=True)
class StorageSettings:
    """How object stores are reached (genreclf.io.storage); credentials come from the environment
    (AWS_ACCESS_KEY_ID / AWS_PROFILE ...), never from a config file."""

    endpoint_url: str = ""  # S3-compatible endpoint (MinIO, Ceph...), e.g. "http://10.0.0.5:9000"; "" = AWS
    region: str = ""  # S3 region; "" = the environment's (AWS_REGION / AWS_DEFAULT_REGION / profile)
    retries: int = 3  # further attempts after a transient read error (connection reset, throttling)
    retry_backoff_s: float = 0.5  # first wait; doubles per retry
    read_ahead_kb: int = 1024  # remote reads are buffered in requests of this size
    list_progress_s: float = 5.0  # a progress line this often while listing a large input
    lock_stale_after_s: float = 86400.0  # an output lock this old may be broken (--break-lock)

    def __post_init__(self):
        check_fields(self, "storage", {
            "endpoint_url": (lambda v: isinstance(v, str) and (v == "" or re.match(r"^https?://[^/]+/?$", v)),
                             'a URL "http://host:port" or "https://host" (or "" for AWS)'),
            "region": (lambda v: isinstance(v, str), "a region name (or empty)"),
            "retries": (lambda v: isinstance(v, int) and 0 <= v <= 20, "an integer in [0, 20]"),
            "retry_backoff_s": (lambda v: isinstance(v, (int, float)) and 0 <= v <= 60, "seconds in [0, 60]"),
            "read_ahead_kb": (lambda v: isinstance(v, int) and 4 <= v <= 262144, "an integer in [4, 262144] (KiB)"),
            "list_progress_s": (lambda v: isinstance(v, (int, float)) and v > 0, "seconds > 0"),
            "lock_stale_after_s": (lambda v: isinstance(v, (int, float)) and v > 0, "seconds > 0"),
        })

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The settings in force in this process ([storage]; the defaults until configure()).
_OPTIONS = StorageSettings().to_dict()
_FILESYSTEMS: dict = {}
_LOCK = threading.Lock()


def configure(options: dict | None) -> None:
    """Use ``options`` (StorageSettings.to_dict()) from now on in this process (driver or worker)."""
    if not options:
        return
    with _LOCK:
        if {**_OPTIONS, **options} != _OPTIONS:
            _OPTIONS.update(options)
            _FILESYSTEMS.clear()


#: The AWS SDKs' endpoint variables, the service-specific one first (it wins); pyarrow 14 reads neither.
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def endpoint_url() -> str:
    """The S3 endpoint in force: ``[storage] endpoint_url``, else the environment's, else AWS ("")."""
    return _OPTIONS["endpoint_url"] or next((os.environ[v] for v in ENDPOINT_VARIABLES if os.environ.get(v)), "")


def options() -> dict:
    """The settings in force, the endpoint resolved: what the driver hands to its tasks, whose
    executors may not have the driver's environment."""
    return {**_OPTIONS, "endpoint_url": endpoint_url()}

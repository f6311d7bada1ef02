"""The state made from the [storage] settings (genreclf.config.StorageSettings): the options in force
in this process and the filesystems opened under them."""

from __future__ import annotations

import os
import threading

from genreclf.config import StorageSettings

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

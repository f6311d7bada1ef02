"""Spies on the storage layer's entry points, for tests that count how often a location is resolved."""

import inspect
import os
import sys

from genreclf.io import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: The storage functions that only compute with strings or errors: handing them a location string
#: resolves nothing. Every other function of the storage API given a location string resolves it.
NOT_RESOLVING = {"is_url", "is_local", "join", "parent", "basename", "resolve", "relative", "redact",
                 "refuse_credentials", "sibling", "hidden_name", "describe", "no_space", "writing", "read_error",
                 "size_of", "configure", "options", "endpoint_url", "map_local", "has_magic", "located"}


def resolutions(monkeypatch, location, *more):
    """The places (file:function outside the storage layer) that hand the storage layer ``location``,
    or a location under it, as a string (to turn into a URL, a path, a filesystem or a
    :class:`~genreclf.io.storage.Location`, or to read, list or write through), recorded from now on
    (``monkeypatch.undo()`` ends it); with ``more`` locations, one such set per location. Passing an
    opened Location is not a resolution."""
    watched = [(str(x), storage.to_url(str(x))) for x in (location, *more)]
    found: list = [set() for _ in watched]

    def record(arg):
        caller = sys._getframe(2).f_code  # the spy's caller (inspect.stack reads every frame's source)
        if not isinstance(arg, str) or isinstance(arg, storage.Location) or "/io/storage/" in caller.co_filename:
            return  # not a string (an opened Location is not resolved again), or the storage layer's own step
        for roots, places in zip(watched, found):
            if arg.startswith(roots):
                places.add(f"{os.path.relpath(caller.co_filename, ROOT)}:{caller.co_name}")

    def spy_on(module, name):
        real = getattr(module, name)

        def spy(*args, _real=real, **kw):
            record(args[0] if args else next(iter(kw.values()), None))
            return _real(*args, **kw)

        monkeypatch.setattr(module, name, spy)

    for name in storage.__all__:
        if name not in NOT_RESOLVING and inspect.isfunction(getattr(storage, name)):
            spy_on(storage, name)
    for module in [m for name, m in sys.modules.items() if name.startswith("genreclf.io.storage.")]:
        for name in ("to_url", "to_location", "filesystem"):  # for the modules that import them directly
            if getattr(module, name, None) is not None:
                spy_on(module, name)
    real_open = storage.Location.open

    def spy_open(cls, location):
        record(location)
        return real_open(location)

    monkeypatch.setattr(storage.Location, "open", classmethod(spy_open))
    return found if more else found[0]

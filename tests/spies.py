"""Spies on the storage layer's entry points, for tests that count how often a location is resolved."""

import os
import sys

from genreclf.io import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolutions(monkeypatch, location) -> set:
    """The places (file:function outside the storage layer) that turn ``location``, or a location
    under it, into a URL, a path, a filesystem or a :class:`~genreclf.io.storage.Location`,
    recorded from now on (``monkeypatch.undo()`` ends it)."""
    roots = (str(location), storage.to_url(str(location)))
    places: set = set()

    def record(arg):
        caller = sys._getframe(2).f_code  # the spy's caller (inspect.stack reads every frame's source)
        if isinstance(arg, str) and arg.startswith(roots) and "/io/storage/" not in caller.co_filename:
            places.add(f"{os.path.relpath(caller.co_filename, ROOT)}:{caller.co_name}")

    for module in [storage] + [m for name, m in sys.modules.items() if name.startswith("genreclf.io.storage.")]:
        for name in ("to_url", "to_location", "filesystem"):
            real = getattr(module, name, None)
            if real is None:
                continue

            def spy(arg, *rest, _real=real, **kw):
                record(arg)
                return _real(arg, *rest, **kw)

            monkeypatch.setattr(module, name, spy)
    real_open = storage.Location.open

    def spy_open(cls, location):
        record(location)
        return real_open(location)

    monkeypatch.setattr(storage.Location, "open", classmethod(spy_open))
    return places

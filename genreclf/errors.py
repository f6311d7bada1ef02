"""The small exception hierarchy: every error a user can meet says what happened and what to do."""


class GenreclfError(Exception):
    """Base class for genreclf's own errors."""


class ConfigError(GenreclfError):
    """A setting, argument or input location is wrong; the message says which and how to fix it."""


class OutputExistsError(GenreclfError):
    """The output location already holds data and neither --overwrite nor --incremental was given."""


class TrackError(GenreclfError):
    """One input file cannot be used; ``reason`` is the short category, ``detail`` the specifics.

    The string form, ``"reason: detail"``, is what lands in the ``error`` column of the tracks table.
    """

    def __init__(self, reason, detail=None):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)

"""The small exception hierarchy: every error a user can meet says what happened and what to do."""


class GenreclfError(Exception):
    """Base class for genreclf's own errors."""


class ConfigError(GenreclfError):
    """A setting, argument or input location is wrong; the message says which and how to fix it."""


class OutputExistsError(GenreclfError):
    """The output location already holds data and neither --overwrite nor --incremental was given."""


class DamagedInputError(GenreclfError):
    """An input the job reads whole (a model bundle, a featurize output) is damaged or inconsistent; the
    message names the file and what to do (restore it, or make it again)."""


class StorageError(GenreclfError):
    """The store refused a write or lost data mid-run (a full disk, a bucket or directory removed)."""


class Interrupted(BaseException):
    """SIGINT (Ctrl-C) or SIGTERM reached the job. A BaseException, as KeyboardInterrupt: no ``except
    Exception`` swallows it, and every ``finally`` on the way out runs (locks released, staging removed)."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signum)


class Reason:
    """Why an input file has no windows: the first words of its ``error`` column (``"reason: detail"``),
    each written once here (README's table lists exactly these; tests/test_layout.py checks)."""

    EMPTY_FILE = "empty file"
    UNREADABLE_FILE = "unreadable file"
    NOT_A_REGULAR_FILE = "not a regular file"
    UNREADABLE_DIRECTORY = "unreadable directory"
    NOT_AUDIO = "not audio"
    NO_AUDIO_FRAMES = "no audio frames"
    NO_AUDIO_DECODED = "no audio decoded"
    TOO_SHORT = "shorter than one {seconds:g} s window"  # the recipe's window: "shorter than one 3 s window"
    TRUNCATED = "truncated"
    TOO_LONG = "too long"
    DECODE_FAILED = "decode failed"
    NO_WINDOWS = "no windows"  # score from features: an ok track whose windows the features lack

    @classmethod
    def all(cls) -> tuple:
        return tuple(v for k, v in vars(cls).items() if k.isupper())

    @classmethod
    def too_short(cls, window_s: float) -> str:
        return cls.TOO_SHORT.format(seconds=round(window_s, 3))


class TrackError(GenreclfError):
    """One input file cannot be used; ``reason`` is the short category, ``detail`` the specifics.

    The string form, ``"reason: detail"``, is what lands in the ``error`` column of the tracks table.
    """

    def __init__(self, reason, detail=None):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


def one_of(values) -> str:
    """How a message lists the allowed values: 'a' or 'b' or 'c'."""
    return " or ".join(repr(v) for v in values)


def check_fields(obj, section: str, rules: dict) -> None:
    """Raise ConfigError naming ``[section] key``, its value and what is allowed, for the first field
    of ``obj`` whose rule ``(ok, allowed)`` fails (a bool is never a number here)."""
    for key, (ok, allowed) in rules.items():
        value = getattr(obj, key)
        if isinstance(value, bool) or not ok(value):
            raise ConfigError(f"[{section}] {key} = {value!r} is not allowed: must be {allowed}")

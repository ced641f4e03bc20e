"""The downloader's one error tree.

Every failure the user can act on is a `DownloaderError` subclass that carries its facts as fields and maps
to one documented process exit code (README, docs/downloader.md "Exit codes"). SDK exceptions are translated into
these at the backend edge (`downloader/sources/`); nothing above that layer sees a botocore or urllib3 exception.
"""

from __future__ import annotations


class DownloaderError(Exception):
    """Base of all errors the downloader reports to the user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross from a worker process to the coordinator (downloader/workers.py) whole: class, message and
        # fields. Pickle's default calls the class with `args`, which most subclasses here do not take.
        return (_restore, (type(self), self.args, dict(self.__dict__)))


class ConfigError(DownloaderError):
    """A setting is unknown, malformed or contradictory."""

    exit_code = 2

    def __init__(self, setting: str, value: object, reason: str) -> None:
        shown = "" if value is None else f" (got {value!r})"
        super().__init__(f"invalid setting {setting}{shown}: {reason}")
        self.setting = setting
        self.value = value
        self.reason = reason


class UriError(ConfigError):
    """The model URI cannot be parsed or names an unsupported scheme."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__("--model-uri", uri, reason)
        self.uri = uri


class SourceError(DownloaderError):
    """The remote store refused or does not have what was asked for. Not retried."""

    exit_code = 3

    def __init__(self, uri: str, reason: str, *, key: str | None = None) -> None:
        where = f"{uri} (object {key!r})" if key else uri
        super().__init__(f"{where}: {reason}")
        self.uri = uri
        self.key = key
        self.reason = reason


class NotFoundError(SourceError):
    """Bucket, prefix or object does not exist (or the prefix selects nothing)."""


class AccessDeniedError(SourceError):
    """Credentials are missing, wrong, or lack permission."""


class TransferError(DownloaderError):
    """Bytes could not be fetched after every retry (network, throttling, stalls)."""

    exit_code = 4

    def __init__(self, key: str, reason: str, *, attempts: int, subject: str = "object") -> None:
        # `subject` names what `key` is: an "object", or the "prefix" (a URI) whose listing failed
        super().__init__(f"{subject} {key!r}: giving up after {attempts} attempt(s): {reason}")
        self.key = key
        self.subject = subject
        self.reason = reason
        self.attempts = attempts


class IntegrityError(DownloaderError):
    """Fetched bytes do not match the size or checksum the source published."""

    exit_code = 5

    def __init__(self, key: str, check: str, expected: str, actual: str, *, hint: str = "") -> None:
        super().__init__(f"object {key!r}: {check} mismatch: expected {expected}, got {actual}{hint}")
        self.key = key
        self.check = check
        self.expected = expected
        self.actual = actual
        self.hint = hint


class LocalStorageError(DownloaderError):
    """The target filesystem failed us (permissions, I/O error, full disk)."""

    exit_code = 6

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class InsufficientSpaceError(LocalStorageError):
    """Checked before any byte is fetched: what is still needed does not fit."""

    def __init__(self, path: str, needed: int, available: int, reserve: int) -> None:
        extra = f" (keeping {reserve} bytes free as configured)" if reserve else ""
        super().__init__(
            path,
            f"not enough free space: need {needed} bytes ({needed / 2**30:.2f} GiB), "
            f"available {available} bytes ({available / 2**30:.2f} GiB){extra}",
        )
        self.needed = needed
        self.available = available
        self.reserve = reserve


class UnsafePathError(DownloaderError):
    """An object key would land outside the model directory or is not a safe file name."""

    exit_code = 7

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"refusing object key {key!r}: {reason}")
        self.key = key
        self.reason = reason


def _restore(cls: type[DownloaderError], args: tuple[object, ...], fields: dict[str, object]) -> DownloaderError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(fields)
    return exc


def size_text(n: int) -> str:
    for unit, factor in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= factor:
            return f"{n} bytes ({n / factor:.2f} {unit})"
    return f"{n} bytes"


def _holders(n: int) -> str:
    return f"{n} lease{'s' if n != 1 else ''} held" if n else "being downloaded or evicted"


class CacheFullError(DownloaderError):
    """The node cache cannot make room: what a download needs (or `cache gc` aims at) does not fit in the budget or
    the free space even with every model not in use evicted. A download fails before it fetches anything."""

    exit_code = 8

    def __init__(
        self,
        root: str,
        goal: str,
        *,
        budget: int | None,
        used: int,
        free: int | None,
        in_use: tuple[tuple[str, int, int], ...],
        evicted: tuple[str, ...] = (),
    ) -> None:
        # `goal`: what could not be met, in words with its numbers; `in_use`: (name, bytes, holders) of each model
        # that could not be evicted
        held = f"models hold {size_text(used)}" + (f" of a budget of {size_text(budget)}" if budget else "")
        parts = [f"{root}: {goal}", held]
        if free is not None:
            parts.append(f"{size_text(free)} free on the filesystem")
        if in_use:
            shown = ", ".join(f"{name} ({size_text(size)}, {_holders(holders)})" for name, size, holders in in_use)
            parts.append(f"in use and not evictable: {shown}")
        else:
            parts.append("no model is in use: what is needed is larger than the budget or the filesystem")
        if evicted:
            parts.append(f"evicted on the way: {', '.join(evicted)}")
        super().__init__("; ".join(parts))
        self.root = root
        self.goal = goal
        self.budget = budget
        self.used = used
        self.free = free
        self.in_use = in_use
        self.evicted = evicted


class ModelInUseError(DownloaderError):
    """`cache rm` of a model that a process holds a lease on (or that is being downloaded)."""

    exit_code = 9

    def __init__(self, root: str, name: str, holders: int) -> None:
        super().__init__(f"{root}: refusing to remove {name}: in use ({_holders(holders)}); stop what serves it first")
        self.root = root
        self.name = name
        self.holders = holders


class Interrupted(DownloaderError):
    """SIGINT/SIGTERM arrived; completed work is kept for the next run."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"interrupted by {signal_name}; completed ranges are kept and the next run resumes")
        self.signal_name = signal_name
        self.exit_code = exit_code


# Exit codes after which the same download, run again, fails the same way until something outside it changes (a
# setting, the source, its permissions): nothing is resumed by a restart. After the others (a transfer that gave up,
# local storage, an integrity failure, a signal, a bug) a rerun keeps every finished file and range and goes on.
PERMANENT_EXIT_CODES = frozenset({ConfigError.exit_code, SourceError.exit_code, UnsafePathError.exit_code})


# Raised inside the engine only; never escapes to the user.
class RetryableError(Exception):
    """A transient failure of one request: reset, timeout, throttling, 5xx, short body."""

    def __init__(self, kind: str, detail: str, *, retry_after: float | None = None, bytes_read: int = 0) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail
        self.retry_after = retry_after
        self.bytes_read = bytes_read


class ObjectChangedError(Exception):
    """The object no longer matches the version pinned at listing time (412 on If-Match)."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"object {key!r} changed during download: {detail}")
        self.key = key
        self.detail = detail

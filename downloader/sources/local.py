"""Local paths (`file:///path` or `/path`): a PVC or shared filesystem that is already mounted.

Files go through the same engine as remote objects (filter, ranges, resume, manifest, path safety), but
bytes move inside the kernel with copy_file_range(2), never through a Python buffer (with fast paths on). A local file
publishes no checksum; its size is checked, and its size and mtime pin the version: a file that changes
while it is being copied is copied again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator

from ..errors import AccessDeniedError, NotFoundError, ObjectChangedError, RetryableError, SourceError
from ..layout import STATE_DIR_NAME, TEMP_SUFFIX
from ..uri import ModelUri
from .base import Body, ObjectDetail, RemoteFile, Span

_UNVERIFIABLE = "a local file publishes no checksum; size checked"


def _version(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}"


class LocalSource:
    open_ahead = 1

    def __init__(self, uri: ModelUri, *, kernel_copy: bool = True) -> None:
        self.root = os.path.abspath(uri.prefix)
        self.display_uri = uri.display
        self._kernel_copy = kernel_copy

    def list(self, cancel: threading.Event) -> Iterator[RemoteFile]:
        try:
            st = os.stat(self.root)
        except FileNotFoundError as exc:
            raise NotFoundError(self.display_uri, "no such file or directory") from exc
        except PermissionError as exc:
            raise AccessDeniedError(self.display_uri, "permission denied") from exc
        if stat.S_ISREG(st.st_mode):
            yield RemoteFile(self.root, os.path.basename(self.root), st.st_size, _version(st))
            return
        errors: list[OSError] = []
        # Directory symlinks are not followed (no loops, no escaping the tree); file symlinks are, as in a
        # Hugging Face cache snapshot whose files point into its blobs/ folder.
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=errors.append):
            if cancel.is_set():
                return
            dirnames[:] = sorted(d for d in dirnames if d != STATE_DIR_NAME)
            for name in sorted(filenames):
                if name.endswith(TEMP_SUFFIX):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    fst = os.stat(path)
                except OSError:
                    continue  # a dangling symlink
                if not stat.S_ISREG(fst.st_mode):
                    continue
                rel = os.path.relpath(path, self.root).replace(os.sep, "/")
                yield RemoteFile(path, rel, fst.st_size, _version(fst))
        for error in errors:
            if isinstance(error, PermissionError):
                raise AccessDeniedError(self.display_uri, f"permission denied: {error.filename}") from error

    def stat(self, f: RemoteFile) -> ObjectDetail:
        try:
            st = os.stat(f.key)
        except FileNotFoundError as exc:
            raise NotFoundError(self.display_uri, "the file disappeared", key=f.key) from exc
        except PermissionError as exc:
            raise AccessDeniedError(self.display_uri, "permission denied", key=f.key) from exc
        except OSError as exc:
            raise RetryableError("io", exc.strerror or str(exc)) from exc
        return ObjectDetail(st.st_size, _version(st), None, (), unverifiable=_UNVERIFIABLE)

    def open(
        self,
        f: RemoteFile,
        detail: ObjectDetail | None,
        span: Span | None,
        buffer: memoryview | None,
        landing_fd: int | None = None,
    ) -> Body:
        try:
            fd = os.open(f.key, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError as exc:
            raise ObjectChangedError(f.key, "the file disappeared") from exc
        except PermissionError as exc:
            raise AccessDeniedError(self.display_uri, "permission denied", key=f.key) from exc
        except OSError as exc:
            raise SourceError(self.display_uri, exc.strerror or str(exc), key=f.key) from exc
        if _version(os.fstat(fd)) != f.version:
            os.close(fd)
            raise ObjectChangedError(f.key, "size or mtime changed since listing")
        start, end = (0, f.size - 1) if span is None else (span.start, span.end)
        body = _LocalBody(start, end, fd, f, self._kernel_copy)
        if span is None:
            body.detail = ObjectDetail(f.size, f.version, None, (), unverifiable=_UNVERIFIABLE)
        return body

    def close(self) -> None:
        pass


class _LocalBody(Body):
    def __init__(self, start: int, end: int, fd: int, f: RemoteFile, kernel_copy: bool) -> None:
        self.end = end
        self._fd = fd
        self._pos = start
        self._file = f
        self._kernel_copy = kernel_copy

    def _advance(self, n: int) -> int:
        self._pos += n
        if self._pos > self.end and _version(os.fstat(self._fd)) != self._file.version:
            raise ObjectChangedError(self._file.key, "the file changed while it was being copied")
        return n

    def readinto(self, buf: memoryview) -> int:
        try:
            n = os.preadv(self._fd, [buf[: self.end - self._pos + 1]], self._pos)
        except OSError as exc:
            raise RetryableError("io", exc.strerror or str(exc)) from exc
        return self._advance(n) if n > 0 else 0

    def copy_into(self, fd: int, offset: int, count: int) -> int | None:
        if not self._kernel_copy:
            return None
        try:
            n = os.copy_file_range(self._fd, fd, count, self._pos, offset)
        except OSError as exc:
            if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF):
                self._kernel_copy = False  # an old kernel or an odd filesystem: copy through a buffer
                return None
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                raise  # the target's problem: the engine reports it as a local storage error
            raise RetryableError("io", exc.strerror or str(exc)) from exc
        return self._advance(n) if n > 0 else 0

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)

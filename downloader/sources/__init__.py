"""Storage backends behind one `Source` interface; `open_source` picks one for a URI."""

from __future__ import annotations

import threading

from ..config import Settings
from ..errors import ConfigError
from .base import Body, Checksum, ObjectDetail, RemoteFile, Source, Span


def open_source(settings: Settings, cancel: threading.Event) -> Source:
    """The backend for the settings' URI. `cancel` ends any wait of its own (a retry's backoff, an answer)."""
    scheme = settings.uri.scheme
    connections, stall = settings.num_threads, settings.stall_timeout
    if scheme in ("s3", "tos"):
        from .s3 import S3Source

        return S3Source(
            settings.uri,
            settings.s3,
            connections=connections,
            stall_timeout=stall,
            max_attempts=settings.max_attempts,
            verify=settings.verify,
            fast_paths=settings.fast_paths,
            cancel=cancel,
        )
    if scheme == "gs":
        from .gcs import GcsSource

        return GcsSource(settings.uri, settings.gcs, connections=connections, stall_timeout=stall)
    if scheme == "hf":
        from .hf import HfSource

        return HfSource(
            settings.uri,
            settings.hf,
            connections=connections,
            stall_timeout=stall,
            max_attempts=settings.max_attempts,
            cancel=cancel,
        )
    if scheme == "file":
        from .local import LocalSource

        return LocalSource(settings.uri, kernel_copy=settings.fast_paths)
    raise ConfigError("--model-uri", settings.uri.display, f"no backend for {scheme}://")


__all__ = ["Body", "Checksum", "ObjectDetail", "RemoteFile", "Source", "Span", "open_source"]

"""What members say to each other: one GET on the owner's sidecar port, answered by sidecar/peers.py.

    GET /peer/v1/file/<the file's path, percent-encoded>
    Authorization: Bearer <the group's token>
    Range: bytes=<start>-<end>
    X-Aibrix-Version: <the version the asker listed>
    X-Aibrix-Wait: <seconds the asker waits for an answer>
    X-Aibrix-From: <the asker's member URL, for the owner's metrics>

    206  Content-Range: bytes <start>-<end>/<size>, Content-Length, X-Aibrix-Version: the bytes, from a finished
         range of the file or from the verified file
    else a refusal, X-Aibrix-Refusal naming it (Refusal): the asker fetches the range from the source

An owner that has not finished the range yet, but will fetch it itself (it is its own share), holds the request
until it has, up to the wait the asker gave less HOLD_MARGIN; so a held request never waits on another one.
"""

from __future__ import annotations

import enum
import hmac
from urllib.parse import quote

PATH_PREFIX = "/peer/v1/file/"
VERSION_HEADER = "x-aibrix-version"
WAIT_HEADER = "x-aibrix-wait"
FROM_HEADER = "x-aibrix-from"
REFUSAL_HEADER = "x-aibrix-refusal"
HOLD_MARGIN = 2.0  # seconds an owner answers before the asker's wait runs out
MAX_HOLD = 600.0  # the longest an owner holds a request, whatever the asker says


class Refusal(str, enum.Enum):
    """Why an owner does not send the bytes asked for, and the status it answers with."""

    TOKEN = "token"  # 401: no token, or not the group's
    PATH = "path"  # 400: not a safe path below the model directory (downloader.plan.safe_parts)
    RANGE = "range"  # 416: no Range, or not one the file has
    UNKNOWN = "unknown"  # 404: not a file of the model this member downloads or holds
    VERSION = "version"  # 412: this member has another version of the file
    NOT_MINE = "not-mine"  # 503: not finished here, and not this member's share: nobody here fetches it
    NOT_YET = "not-yet"  # 503: this member's share, not finished within the wait

    @property
    def status(self) -> int:
        return _STATUS[self]


_STATUS = {
    Refusal.TOKEN: 401,
    Refusal.PATH: 400,
    Refusal.RANGE: 416,
    Refusal.UNKNOWN: 404,
    Refusal.VERSION: 412,
    Refusal.NOT_MINE: 503,
    Refusal.NOT_YET: 503,
}


def file_target(rel_path: str) -> str:
    """The request target for a file's bytes."""
    return PATH_PREFIX + quote(rel_path, safe="/")


def bearer(token: str) -> str:
    return f"Bearer {token}"


def token_matches(authorization: str | None, token: str) -> bool:
    """Whether an Authorization header carries `token` (compared in constant time)."""
    if not authorization or not authorization.startswith("Bearer "):
        return False
    return hmac.compare_digest(authorization[len("Bearer ") :].strip().encode(), token.encode())


def content_range(start: int, end: int, size: int) -> str:
    return f"bytes {start}-{end}/{size}"

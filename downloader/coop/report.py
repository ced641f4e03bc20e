"""What a cooperating member reports about its group, in progress.json's `cooperation` field (downloader/layout.py):
its share, where its bytes came from, and each peer's state. The sidecar reads it back for /status and /metrics."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any


class PeerState(str, enum.Enum):
    """A peer as this member sees it."""

    UNTRIED = "untried"  # not asked anything yet
    UP = "up"  # its last answer was a proper one (bytes, or a refusal that says why)
    DOWN = "down"  # unreachable, silent for the stall timeout, or answering wrongly: skipped for a while
    DROPPED = "dropped"  # bytes it served failed verification: never asked again by this download

    @property
    def usable(self) -> bool:
        return self in (PeerState.UNTRIED, PeerState.UP)


@dataclass
class PeerReport:
    state: PeerState = PeerState.UNTRIED
    reason: str = ""  # why it is down or dropped
    bytes: int = 0  # bytes received from it
    ranges: int = 0  # ranges (or the rest of one) it sent in full
    refusals: dict[str, int] = field(default_factory=dict)  # its refusals by kind (protocol.Refusal)
    failures: int = 0  # connections refused, stalls, broken or wrong answers


@dataclass
class CoopReport:
    self_url: str
    members: list[str]
    share_bytes: int = 0  # bytes of the ranges planned so far that are this member's own share
    planned_bytes: int = 0  # bytes of every range planned so far that peers' bytes may fill
    bytes_from_origin: int = 0
    bytes_from_peers: int = 0
    files_refetched: int = 0  # files that failed verification with peers' bytes in them, fetched again
    peers: dict[str, PeerReport] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: object) -> CoopReport | None:
        """The report as written, or None when `data` is not one (an older or newer downloader's)."""
        if not isinstance(data, dict):
            return None
        try:
            peers = {
                str(url): PeerReport(**{**p, "state": PeerState(p["state"])}) for url, p in dict(data["peers"]).items()
            }
            return cls(**{**data, "peers": peers})
        except (KeyError, TypeError, ValueError):
            return None

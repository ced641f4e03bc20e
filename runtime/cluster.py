"""Ray cluster membership, read from the head's dashboard (`GET /api/v0/nodes`, tens of milliseconds), and the
GCS port probe the workers use. Parsing and the summaries are pure; only `Dashboard.nodes` and `probe_tcp` do I/O.
The sidecar reads membership through `Dashboard` too (its readiness with --expected-ray-nodes).

Dead nodes stay listed by Ray, so only `state == "ALIVE"` counts.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Node:
    node_id: str
    ip: str
    name: str
    is_head: bool
    state: str  # ALIVE, DEAD, ...
    accelerators: float  # amount of the accelerator resource (GPU) this node offers

    @property
    def alive(self) -> bool:
        return self.state == "ALIVE"

    def label(self, resource: str = "GPU") -> str:
        role = "head, " if self.is_head else ""
        n = self.accelerators
        amount = str(int(n)) if float(n).is_integer() else f"{n:g}"
        who = self.ip if self.name in ("", self.ip) else f"{self.name} ({self.ip})"
        return f"{who} [{role}{amount} {resource}]"


def parse_nodes(payload: Any, resource: str = "GPU") -> list[Node]:
    """Nodes from the state API's answer: {"data": {"result": {"result": [...]}}} (older Ray: one level less)."""
    data = payload.get("data", payload) if isinstance(payload, dict) else payload
    nodes: Any = data
    for _ in range(2):
        if isinstance(nodes, dict) and "result" in nodes:
            nodes = nodes["result"]
    if not isinstance(nodes, list):
        raise ValueError("unexpected answer from the Ray dashboard (no node list)")
    out: list[Node] = []
    for n in nodes:
        if not isinstance(n, dict):
            continue
        resources = n.get("resources_total") or {}
        amount = resources.get(resource, 0) if isinstance(resources, dict) else 0
        out.append(
            Node(
                node_id=str(n.get("node_id", "")),
                ip=str(n.get("node_ip", "")),
                name=str(n.get("node_name") or ""),
                is_head=bool(n.get("is_head_node", False)),
                state=str(n.get("state", "")),
                accelerators=float(amount) if isinstance(amount, (int, float)) else 0.0,
            )
        )
    return out


@dataclass(frozen=True)
class Membership:
    """Who is in the cluster against what the head waits for."""

    alive: tuple[Node, ...]
    dead: tuple[Node, ...]
    expected_nodes: int
    expected_accelerators: int
    resource: str = "GPU"

    @classmethod
    def of(cls, nodes: Iterable[Node], expected_nodes: int, expected_accelerators: int, resource: str) -> Membership:
        nodes = list(nodes)
        alive = tuple(sorted((n for n in nodes if n.alive), key=lambda n: (not n.is_head, n.ip, n.node_id)))
        alive_ids = {n.node_id for n in alive}
        # a restarted node shows up twice: its DEAD past and its ALIVE present; only mention the past once
        dead = tuple(sorted({n.node_id: n for n in nodes if not n.alive and n.node_id not in alive_ids}.values(),
                            key=lambda n: (n.ip, n.node_id)))  # fmt: skip
        return cls(alive, dead, expected_nodes, expected_accelerators, resource)

    @property
    def accelerators(self) -> float:
        return sum(n.accelerators for n in self.alive)

    @property
    def missing_nodes(self) -> int:
        return max(0, self.expected_nodes - len(self.alive))

    @property
    def missing_accelerators(self) -> float:
        return max(0.0, self.expected_accelerators - self.accelerators)

    @property
    def complete(self) -> bool:
        return self.missing_nodes == 0 and self.missing_accelerators == 0 and bool(self.alive)

    def summary(self) -> str:
        """e.g. `1 of 2 nodes, 1 of 2 GPU present: 127.0.0.11 [head, 1 GPU]; missing: 1 node, 1 GPU`."""
        r = self.resource
        n_alive = len(self.alive)
        nodes = f"{n_alive} of {self.expected_nodes} nodes" if self.expected_nodes else _plural(n_alive, "node")
        gpus = f"{_num(self.accelerators)} of {self.expected_accelerators} {r}"
        present = ", ".join(n.label(r) for n in self.alive) or "none"
        text = f"{nodes}, {gpus} present: {present}"
        missing = []
        if self.missing_nodes:
            missing.append(_plural(self.missing_nodes, "node"))
        if self.missing_accelerators:
            missing.append(f"{_num(self.missing_accelerators)} {r}")
        if missing:
            text += "; missing: " + ", ".join(missing)
        if self.dead:
            text += "; dead: " + ", ".join(n.label(r) for n in self.dead)
        return text


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def engine_nodes(m: Membership) -> tuple[Node, ...]:
    """The nodes the engine runs on once it starts: the head (the vLLM driver) and every node offering the
    accelerator resource (its placement group spans them)."""
    return tuple(n for n in m.alive if n.is_head or n.accelerators > 0)


def lost_nodes(watched: Sequence[Node], nodes: Iterable[Node]) -> list[tuple[Node, str]]:
    """Watched nodes that are no longer ALIVE now, with their current state (or 'gone' if no longer listed)."""
    now = {n.node_id: n for n in nodes}
    lost: list[tuple[Node, str]] = []
    for w in watched:
        current = now.get(w.node_id)
        if current is None:
            lost.append((w, "gone"))
        elif not current.alive:
            lost.append((w, current.state or "unknown"))
    return lost


class Dashboard:
    """The head's dashboard state API."""

    def __init__(self, url: str, timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False)

    def nodes(self, resource: str = "GPU") -> list[Node]:
        """Raises httpx.HTTPError or ValueError when the dashboard does not answer usefully."""
        r = self._http.get(self.url + "/api/v0/nodes", params={"limit": 10000})
        r.raise_for_status()
        return parse_nodes(r.json(), resource)

    def close(self) -> None:
        self._http.close()


def probe_tcp(host: str, port: int, timeout: float) -> str | None:
    """None when something accepts a connection at host:port, else the reason (for the log)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except socket.gaierror as exc:
        return f"cannot resolve {host} ({exc.strerror})"
    except TimeoutError:
        return "timed out"
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def probe_http(url: str, timeout: float) -> int | None:
    """The status code of GET url, or None when nothing answers."""
    try:
        with httpx.Client(timeout=timeout, trust_env=False) as client:
            return client.get(url).status_code
    except httpx.HTTPError:
        return None

"""Cooperative download: the members of one serving group share one download of the model.

Each member fetches a deterministic share of every file's ranges from the source (rendezvous hashing over the
members: members.py), its sidecar serves what it has finished to the others (holdings.py, read by sidecar/peers.py),
and it fetches the other ranges from the member that owns them (source.py, over protocol.py). Nothing a peer sends
is trusted: a file with bytes from peers is verified against the source's own checksums like any other, and one
that fails is fetched again from the source alone while the peers that served it are dropped. Design and failure
handling: docs/design.md, "Cooperative download".
"""

"""Requests in flight over time, --connections auto against fixed counts (``bench/bench_connections.py``).

Behind the emulated network (per-connection caps far below the aggregate cap, a first-byte latency), in front of a
store that answers 503 SlowDown above a number of GETs at once, and on plain loopback: the count the automatic mode
sets and the rate it reaches against fixed counts, from the server side's counters (bytes sent, connections open)
and the downloader's log of its changes."""

"""The interpreter's ceiling per data path (``bench/bench_ceiling.py``).

Work done while holding the GIL does not spread over cores: if a GiB costs X seconds of GIL-held time, no number
of cores takes one process past 1/X GiB/s. Each path's download runs at two model sizes under py-spy's GIL sampler
(sampler), several rounds interleaved; the per-GiB costs are the slopes between the sizes, so what does not grow
with the bytes (start-up, imports, listing) drops out. The sampler's error is measured against a known GIL-held
time first (``calibrate``)."""

"""Which byte path and which checksum code should the downloader use? Measured, not guessed
(``bench/bench_datapath.py``; BENCHMARKS.md, "Choosing the data path"). Sections: ``local`` (1, 4), ``network`` (2, 3).

    .venv/bin/python bench/bench_datapath.py [--only checksums,reads,gets,disk] [--reps 7] [--size-mib 1024]
        [--small-count 1000] [--disk-mib 1024] [--endpoint URL]

1. Checksums: single-thread throughput of every CRC/hash implementation importable here, on a 1 MiB buffer
   (the engine's buffer size): zlib.crc32 (the system zlib), ISA-L's crc32 (`isal`), google-crc32c (which
   needs a read-only buffer, so the engine must copy each chunk), the AWS CRT's CRCs when installed, and MD5.
2. Body read paths: one object fetched from SeaweedFS (started here on 127.0.0.1 with a throw-away store,
   unless --endpoint names a running one holding s3://bench/<key>) as 64 MiB ranged GETs on 4 threads into
   a reused 1 MiB buffer, no disk, through downloader.sources.s3.S3Source.open with
     boto3      its boto3 transport (--fast-paths off): StreamingBody.readinto
     rest       its REST transport: SigV4 signed here, http.client's readinto straight into the buffer
   interleaved A B, B A, ... for --reps pairs; client CPU seconds per GiB (user, sys) from getrusage of the
   process, which does nothing else meanwhile.
3. Per-GET cost, small objects: --small-count objects of 256 KiB under s3://bench/datapath/small/ (uploaded
   when missing), each fetched whole into a new file under a scratch directory of bench/.work/ and checked
   with CRC32 (ISA-L), one after another on one thread, through a real downloader.sources.s3.S3Source.
   Three GET paths,
     boto3      S3Source with fast paths off: get_object, readinto a reused 1 MiB buffer, one write
     rest       S3Source's REST transport (--no-s3-crt): SigV4 signed here, sent over http.client
     crt        S3Source with the AWS CRT's S3 client: the body handed over into the same buffer
   rotated A B C, B C A, C A B, ... for --reps rounds; process CPU (user, sys from getrusage, the CRT's
   native threads included) and wall milliseconds per GET, and the medians of the per-round CPU ratios
   against boto3.
4. Disk write path: --disk-mib MiB of random data (one 8 MiB page-aligned buffer, reused) written into a new
   file under bench/.work/ (the filesystem the benchmark downloads into), preallocated with posix_fallocate,
   in 1 MiB pwrite calls, then fdatasync, with
     pagecache  buffered descriptor, downloader.state.start_writeback after every 64 MiB
     direct     a second descriptor from downloader.state.open_direct (O_DIRECT), fdatasync on the first
   after an os.sync() before each run, interleaved A B, B A, ... for --reps pairs; wall, user and sys
   CPU seconds per GiB from getrusage of the process, plus the whole machine's busy CPU time from
   /proc/stat (which also counts the kernel's writeback threads, invisible to getrusage).

Writes bench/results/datapath-<timestamp>.json and prints markdown tables.
"""

"""The weights reader: the first read of every weight file of a downloaded model, as an engine loading it with
safetensors does it. Run as its own process, right after the tool exits (``runner.py``); standard library only.

How safetensors reads (its ``safe_open(..., framework="pt")``): it maps the whole file (torch's
``UntypedStorage.from_file(path, shared=False)``, a private read-only mmap) and hands out tensors that are
slices of that mapping; the first time the engine reads a tensor's bytes (to copy them to the device), its
pages fault in through the page cache, from disk if they are not cached. So the default method, ``mmap``, maps
each file the same way and copies every byte out of the mapping in 16 MiB slices into one reusable buffer (the
copy stands for the engine's copy to the device; every page is faulted exactly once, in file order). ``read``
(plain ``readinto`` of 16 MiB at a time) is there to compare: the same bytes through the page cache, without
page faults. Files are read one after another, in sorted order, as vLLM's default loader does.

Prints one JSON line: files, bytes, seconds (from the first open to the last byte), method.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import mmap
import os
import sys
import time


def weight_files(root: str, pattern: str) -> list[str]:
    """Files under ``root`` whose name matches ``pattern``, outside dot-directories (tools' metadata), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and fnmatch.fnmatch(f, pattern)]
    return sorted(out)


def read_mapped(path: str, buf: bytearray) -> int:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return 0
        with mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) as mm:
            view = memoryview(mm)
            try:
                step = len(buf)
                for off in range(0, size, step):
                    n = min(step, size - off)
                    buf[:n] = view[off : off + n]
            finally:
                view.release()
    return size


def read_plain(path: str, buf: bytearray) -> int:
    view = memoryview(buf)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(view):
            total += n
    return total


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("root")
    p.add_argument("--glob", default="*.safetensors")
    p.add_argument("--method", choices=["mmap", "read"], default="mmap")
    p.add_argument("--block-mib", type=int, default=16)
    a = p.parse_args(argv)
    read = read_mapped if a.method == "mmap" else read_plain
    buf = bytearray(a.block_mib << 20)
    t0 = time.perf_counter()
    files = weight_files(a.root, a.glob)
    total = sum(read(f, buf) for f in files)
    seconds = time.perf_counter() - t0
    print(json.dumps({"files": len(files), "bytes": total, "seconds": seconds, "method": a.method}))
    return 0 if files else 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

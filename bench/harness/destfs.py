"""The filesystem the tools write into: a node's (journaled ext4 on a loop device) or the work directory's own.

Why: this VM's root filesystem is ext4 *without a journal*. There, ext4 will not reuse an inode number freed in the
last 60 s (360 s while its inode-table block is dirty), and checks every candidate against the inode table while it
looks for a free one (``recently_deleted`` in fs/ext4/ialloc.c, run only without a journal). The harness deletes each
run's files seconds before the next run creates as many again, so a run of 3,000 files spent most of its system time
skipping the previous run's inodes: 3-5 s of system time where the same download takes ~1 s on a journaled ext4,
varying with the order of the runs. A node's model directory is on a journaled filesystem (ext4 or XFS on NVMe), so
by default (``--dest-fs loop``, as root) the harness makes one: a sparse image file in the work directory, attached
to a loop device with direct I/O (its writes go to the image file without a second copy in the page cache), formatted
by ``mkfs.ext4`` with its defaults (a journal) and mounted for the whole benchmark. ``--dest-fs work-dir`` keeps the
old behaviour; the results record which one ran.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .common import log

GiB = 1 << 30
IMAGE_BYTES = 24 * GiB  # sparse: holds the largest model's source files and one download, with room to spare


@dataclass
class LoopFilesystem:
    """A journaled ext4 mounted on a loop device backed by a sparse image file; ``close`` undoes every step."""

    base: Path  # holds the image file and the mount point; removed by close
    device: str = ""
    mounted: bool = False

    @property
    def image(self) -> Path:
        return self.base / "ext4.img"

    @property
    def mount_point(self) -> Path:
        return self.base / "mnt"

    def open(self) -> LoopFilesystem:
        with open(self.image, "wb") as f:
            f.truncate(IMAGE_BYTES)
        self.device = _out(["losetup", "--direct-io=on", "--show", "--find", str(self.image)])
        _out(["mkfs.ext4", "-q", "-F", self.device])
        self.mount_point.mkdir(parents=True, exist_ok=True)
        _out(["mount", self.device, str(self.mount_point)])
        self.mounted = True
        log(f"destination filesystem: journaled ext4 on {self.device} ({self.image}), mounted at {self.mount_point}")
        return self

    def close(self) -> None:
        if self.mounted:
            try:
                _out(["umount", str(self.mount_point)])
            except subprocess.CalledProcessError:
                return  # still in use: the device and the image stay
            self.mounted = False
        if self.device:
            with contextlib.suppress(subprocess.CalledProcessError):
                _out(["losetup", "--detach", self.device])
                self.device = ""
        with contextlib.suppress(OSError):
            self.mount_point.rmdir()
        self.image.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.base.rmdir()

    def describe(self) -> str:
        return f"journaled ext4 (mkfs.ext4 defaults) on a loop device with direct I/O, image in {self.image.parent}"


def open_loop_filesystem(work_dir: Path) -> LoopFilesystem:
    """Make, format and mount the filesystem under ``work_dir``; on any failure undo what was done and raise."""
    fs = LoopFilesystem(Path(tempfile.mkdtemp(prefix="destfs-", dir=work_dir)))
    try:
        return fs.open()
    except subprocess.CalledProcessError as exc:
        fs.close()
        said = (exc.stderr or "").strip() or f"exit {exc.returncode}"
        raise SystemExit(
            f"--dest-fs loop: `{' '.join(exc.cmd)}` failed ({said}); --dest-fs work-dir writes into {work_dir} instead"
        ) from exc
    except BaseException:
        fs.close()
        raise


def _out(argv: list[str]) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()

"""aibrix-download: model weights from object storage into a node-local directory.

Public, read-only state API (used by the sidecar and the runtime; the whole contract is downloader/layout.py):
    read_manifest(model_dir) -> Manifest | None   the readiness signal: complete and verified
    read_progress(model_dir) -> Progress | None   live progress of a running (or the last) download
    Phase                                         the phases progress.json names, and when each began
    is_ready(model_dir) -> bool                   manifest present and every file still in place
    damaged_files(model_dir, manifest) -> [path]  files the manifest lists that are missing or changed
"""

__version__ = "0.1.0"  # before the imports below: config reads it for --version

from .layout import Manifest, ManifestFile, Phase, Progress, damaged_files, is_ready, read_manifest, read_progress

__all__ = [
    "Manifest",
    "ManifestFile",
    "Phase",
    "Progress",
    "__version__",
    "damaged_files",
    "is_ready",
    "read_manifest",
    "read_progress",
]

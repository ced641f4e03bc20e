"""A small, honest local Hugging Face Hub for tests and benchmarks (stdlib only, threaded).

It serves exactly what huggingface_hub's `model_info`, `list_repo_tree`, `get_hf_file_metadata`,
`hf_hub_download` and `snapshot_download` call, the way huggingface.co answers them (checked against
huggingface_hub 2.x's source):

  GET  /api/models/{org}/{name}/revision/{rev}        JSON with id, sha, siblings, ...
  GET  /api/models/{org}/{name}/tree/{rev}[/{path}]    ?recursive=&expand=&cursor=; paginated with
                                                       `Link: <...>; rel="next"`; items with type, oid,
                                                       size, path, and lfs {oid, size, pointerSize}
  HEAD/GET /{org}/{name}/resolve/{rev}/{path}          X-Repo-Commit, ETag (git blob id); LFS files add
                                                       X-Linked-Etag (sha256) and X-Linked-Size and, when
                                                       `redirect_lfs`, answer 302 to the CDN
  HEAD/GET {cdn}/blobs/{sha256}?expires=..&sig=..      the CDN: bytes with Range, no token needed

Header names go out in lower case, as huggingface.co sends them. Errors carry the Hub's `X-Error-Code`
(RepoNotFound, RevisionNotFound, EntryNotFound) and `X-Error-Message` headers, which huggingface_hub turns
into its typed exceptions. No `X-Xet-*` header is ever sent (a client would switch protocol). Blobs live on
disk and are sent with sendfile(2), so the server is not the bottleneck of a benchmark on loopback.

Test hooks: a required token (401 without it or with a wrong one), `log` of every request per port with
the Authorization header it carried, `push()` to move a branch to a new commit, `hidden` to make a listed
file 404 at resolve time, `cdn_base` to put a proxy in front of the CDN, `expire_issued_urls()` to expire
every redirect URL issued so far (as a signed URL's expiry would).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import TracebackType
from urllib.parse import parse_qs, quote, unquote, urlsplit

MiB = 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".gguf", ".h5", ".msgpack", ".onnx")


@dataclass(frozen=True)
class Blob:
    path: str  # on disk
    sha256: str
    size: int
    git_oid: str  # the git blob id of the file (non-LFS) or of its LFS pointer
    lfs: bool
    pointer_size: int


@dataclass
class Request:
    port: str  # "hub" or "cdn"
    method: str
    path: str
    authorization: str | None
    range: str | None
    status: int = 0
    body_bytes: int = 0


@dataclass
class _Repo:
    branches: dict[str, str] = field(default_factory=dict)
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    private: bool = False


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class FakeHub:
    """`with FakeHub(token="hf_x") as hub: hub.create_repo("org/name", files)`; point HF_ENDPOINT at hub.url."""

    def __init__(
        self,
        *,
        token: str | None = None,
        redirect_lfs: bool = True,
        lfs_suffixes: tuple[str, ...] = LFS_SUFFIXES,
        lfs_min_size: int = 10 * MiB,
        page_size: int = 50,
    ) -> None:
        self.token = token
        self.redirect_lfs = redirect_lfs
        self.lfs_suffixes = lfs_suffixes
        self.lfs_min_size = lfs_min_size
        self.page_size = page_size
        self.cdn_base: str | None = None  # where redirects point; default: the CDN port itself
        self._expired_up_to = 0  # redirect URLs numbered up to this answer 403, like an expired signed URL
        self._issued = 0  # redirect URLs issued so far (each carries its number)
        self.hidden: set[tuple[str, str]] = set()  # (repo, path): listed, but 404 at resolve time
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._log: list[Request] = []
        self._dir = tempfile.mkdtemp(prefix="fakehub-")
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------------------------------- lifecycle
    def start(self) -> FakeHub:
        for role in ("hub", "cdn"):
            server = _Server(self, role)
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._servers[role] = server
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
            server.close_connections()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def _port(self, role: str) -> int:
        return int(self._servers[role].server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port('hub')}"

    @property
    def cdn_url(self) -> str:
        return f"http://127.0.0.1:{self._port('cdn')}"

    @property
    def port(self) -> int:
        return self._port("hub")

    @property
    def cdn_port(self) -> int:
        return self._port("cdn")

    # ------------------------------------------------------------------------------------ repositories
    def create_repo(self, repo: str, files: Mapping[str, bytes | Path], *, private: bool = False) -> str:
        """A repository whose `main` branch has these files (bytes, or a file on disk); returns the commit."""
        with self._lock:
            self._repos[repo] = _Repo(private=private)
        return self.push(repo, files, branch="main")

    def push(
        self, repo: str, files: Mapping[str, bytes | Path], *, branch: str = "main", delete: Iterable[str] = ()
    ) -> str:
        """A new commit on `branch` (created from main if missing): files added or replaced, some deleted."""
        blobs = {path: self._store(path, data) for path, data in files.items()}
        with self._lock:
            r = self._repos[repo]
            parent = r.branches.get(branch) or r.branches.get("main")
            tree = dict(r.commits[parent]) if parent else {}
            tree.update(blobs)
            for path in delete:
                tree.pop(path, None)
            seed = json.dumps([parent, sorted((p, b.git_oid) for p, b in tree.items()), time.time_ns()])
            commit = hashlib.sha1(seed.encode()).hexdigest()
            r.commits[commit] = tree
            r.branches[branch] = commit
            return commit

    def files_at(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        with self._lock:
            tree = self._repos[repo].commits[self._resolve(self._repos[repo], revision) or ""]
        out = {}
        for path, blob in tree.items():
            with open(blob.path, "rb") as fh:
                out[path] = fh.read()
        return out

    def _store(self, path: str, data: bytes | Path) -> Blob:
        if isinstance(data, Path):  # a large file on disk: hashed in blocks, linked (or copied) in
            h = hashlib.sha256()
            with open(data, "rb") as fh:
                while block := fh.read(4 * MiB):
                    h.update(block)
            sha, size, small = h.hexdigest(), data.stat().st_size, b""
        else:
            sha, size, small = hashlib.sha256(data).hexdigest(), len(data), data
        disk = os.path.join(self._dir, sha)
        if not os.path.exists(disk):
            if isinstance(data, Path):
                try:
                    os.link(data, disk)
                except OSError:
                    shutil.copyfile(data, disk)
            else:
                with open(disk + ".tmp", "wb") as fh:
                    fh.write(data)
                os.replace(disk + ".tmp", disk)
        lfs = path.endswith(self.lfs_suffixes) or size >= self.lfs_min_size or isinstance(data, Path)
        pointer = lfs_pointer(sha, size)
        oid = git_blob_oid(pointer) if lfs else git_blob_oid(small)
        return Blob(disk, sha, size, oid, lfs, len(pointer) if lfs else 0)

    @staticmethod
    def _resolve(r: _Repo, revision: str) -> str | None:
        if revision in r.branches:
            return r.branches[revision]
        if re.fullmatch(r"[0-9a-f]{40}", revision) and revision in r.commits:
            return revision
        return None

    # ----------------------------------------------------------------------------------------- records
    @property
    def log(self) -> list[Request]:
        with self._lock:
            return list(self._log)

    def reset_log(self) -> None:
        with self._lock:
            self._log.clear()

    def requests(self, port: str) -> list[Request]:
        return [r for r in self.log if r.port == port]

    def authorizations(self, port: str) -> set[str | None]:
        """Every Authorization header value (None = absent) a port received."""
        return {r.authorization for r in self.requests(port)}

    def _record(self, req: Request) -> None:
        with self._lock:
            self._log.append(req)

    def expire_issued_urls(self) -> None:
        """Every redirect URL issued so far answers 403 from now on; the ones issued later are good."""
        with self._lock:
            self._expired_up_to = self._issued

    def _expired(self, number: int) -> bool:
        with self._lock:
            return number <= self._expired_up_to

    def _sign(self, sha: str) -> str:
        with self._lock:
            self._issued += 1
            number = self._issued
        sig = hashlib.sha256(f"{sha}:{number}".encode()).hexdigest()[:16]
        base = (self.cdn_base or self.cdn_url).rstrip("/")
        return f"{base}/blobs/{sha}?n={number}&sig={sig}"


class _Server(socketserver.ThreadingTCPServer):
    # Not http.server.HTTPServer: its server_bind does a reverse DNS lookup, which can hang in a sandbox.
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, hub: FakeHub, role: str) -> None:
        self.hub = hub
        self.role = role
        self._socks: set[socket.socket] = set()
        self._socks_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: socket.socket | tuple[bytes, socket.socket], client_address: object) -> None:
        assert isinstance(request, socket.socket)
        with self._socks_lock:
            self._socks.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: socket.socket | tuple[bytes, socket.socket]) -> None:
        with self._socks_lock:
            self._socks.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._socks_lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hang up mid-body on purpose (kill -9, abandoned ranges): stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_GET(self) -> None:
        self._dispatch()

    # --------------------------------------------------------------------------------------- routing
    def _dispatch(self) -> None:
        hub = self.server.hub
        self.req = Request(
            self.server.role, self.command, self.path, self.headers.get("Authorization"), self.headers.get("Range")
        )
        hub._record(self.req)
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        if self.server.role == "cdn":
            m = re.fullmatch(r"/blobs/([0-9a-f]{64})", path)
            if not m:
                return self._error(404, "EntryNotFound", "no such blob")
            return self._cdn(m.group(1), query)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path)
        if m:
            return self._model_info(m.group(1), unquote(m.group(2)))
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path)
        if m:
            return self._tree(m.group(1), unquote(m.group(2)), unquote(m.group(3) or ""), query)
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m:
            return self._resolve_file(m.group(1), unquote(m.group(2)), unquote(m.group(3)))
        return self._error(404, None, "not found")

    def _authorized(self) -> bool:
        token = self.server.hub.token
        if token is None:
            return True
        got = self.headers.get("Authorization")
        if got is None:
            # What huggingface.co answers for a private repo without credentials.
            self._error(401, "RepoNotFound", "Invalid username or password.")
            return False
        if got != f"Bearer {token}":
            self._error(401, None, "Invalid credentials in Authorization header")
            return False
        return True

    def _repo(self, name: str) -> _Repo | None:
        if not self._authorized():
            return None
        with self.server.hub._lock:
            r = self.server.hub._repos.get(name)
        if r is None:
            self._error(404, "RepoNotFound", "Repository not found")
        return r

    def _commit(self, r: _Repo, revision: str) -> str | None:
        with self.server.hub._lock:
            commit = FakeHub._resolve(r, revision)
        if commit is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    # ------------------------------------------------------------------------------------------ API
    def _model_info(self, name: str, revision: str) -> None:
        r = self._repo(name)
        if r is None:
            return
        commit = self._commit(r, revision)
        if commit is None:
            return
        tree = r.commits[commit]
        self._json(
            {
                "_id": hashlib.sha1(name.encode()).hexdigest()[:24],
                "id": name,
                "modelId": name,
                "sha": commit,
                "private": r.private,
                "gated": False,
                "disabled": False,
                "lastModified": "2025-01-01T00:00:00.000Z",
                "createdAt": "2025-01-01T00:00:00.000Z",
                "tags": [],
                "downloads": 0,
                "likes": 0,
                "siblings": [{"rfilename": p} for p in sorted(tree)],
            }
        )

    def _tree(self, name: str, revision: str, folder: str, query: dict[str, list[str]]) -> None:
        r = self._repo(name)
        if r is None:
            return
        commit = self._commit(r, revision)
        if commit is None:
            return
        recursive = query.get("recursive", ["false"])[0].lower() in ("true", "1")
        tree = r.commits[commit]
        prefix = folder.strip("/") + "/" if folder.strip("/") else ""
        entries: dict[str, dict[str, object]] = {}
        for path in sorted(tree):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :].split("/")
            depth = len(rest) if recursive else 1
            for i in range(1, min(depth, len(rest) - 1) + 1):  # folders on the way
                d = prefix + "/".join(rest[:i])
                entries.setdefault(d, {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0})
            if len(rest) == 1 or recursive:
                b = tree[path]
                item: dict[str, object] = {"type": "file", "oid": b.git_oid, "size": b.size}
                if b.lfs:
                    item["lfs"] = {"oid": b.sha256, "size": b.size, "pointerSize": b.pointer_size}
                entries[path] = item
        if prefix and not entries:
            return self._error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        items = [{**v, "path": k} for k, v in entries.items()]
        cursor = int(query.get("cursor", ["0"])[0])
        page = items[cursor : cursor + self.server.hub.page_size]
        headers = {}
        if cursor + self.server.hub.page_size < len(items):
            host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
            nxt = (
                f"http://{host}/api/models/{name}/tree/{quote(revision, safe='')}"
                + (f"/{quote(folder)}" if folder else "")
                + f"?recursive={str(recursive).lower()}&expand=false&cursor={cursor + self.server.hub.page_size}"
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        self._json(page, headers)

    # ------------------------------------------------------------------------------------- file bytes
    def _resolve_file(self, name: str, revision: str, path: str) -> None:
        hub = self.server.hub
        r = self._repo(name)
        if r is None:
            return
        commit = self._commit(r, revision)
        if commit is None:
            return
        blob = r.commits[commit].get(path)
        if blob is None or (name, path) in hub.hidden:
            return self._error(404, "EntryNotFound", f"{path} does not exist on {revision}", {"X-Repo-Commit": commit})
        headers = {"X-Repo-Commit": commit, "ETag": f'"{blob.git_oid}"', "Accept-Ranges": "bytes"}
        if blob.lfs:
            headers["X-Linked-Etag"] = f'"{blob.sha256}"'
            headers["X-Linked-Size"] = str(blob.size)
            if hub.redirect_lfs:
                headers["Location"] = hub._sign(blob.sha256)
                return self._send(302, b"", headers)
        self._bytes(blob, headers)

    def _cdn(self, sha: str, query: dict[str, list[str]]) -> None:
        if self.server.hub._expired(int(query.get("n", ["0"])[0])):
            return self._error(403, None, "Request has expired")
        disk = os.path.join(self.server.hub._dir, sha)
        if not os.path.exists(disk):
            return self._error(404, None, "NoSuchKey")
        size = os.path.getsize(disk)
        blob = Blob(disk, sha, size, "", True, 0)
        self._bytes(blob, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes", "Content-Type": "binary/octet-stream"})

    def _bytes(self, blob: Blob, headers: dict[str, str]) -> None:
        size = blob.size
        start, end = 0, size - 1
        status = 200
        raw = self.headers.get("Range")
        if raw:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", raw.strip())
            if not m or (not m.group(1) and not m.group(2)):
                return self._error(416, None, "invalid range", {"Content-Range": f"bytes */{size}"})
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
            else:
                start = max(0, size - int(m.group(2)))
            if start >= size or start > end:
                return self._error(416, None, "range not satisfiable", {"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = end - start + 1 if size else 0
        headers["Content-Length"] = str(length)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k.lower(), v)  # as huggingface.co sends them: clients must not depend on case
        self.end_headers()
        self.req.status = status
        if self.command == "HEAD" or length == 0:
            return
        with open(blob.path, "rb") as fh:
            sent = 0
            while sent < length:
                n = self.connection.sendfile(fh, start + sent, length - sent)
                if n == 0:
                    break
                sent += n
                with self.server.hub._lock:
                    self.req.body_bytes += n

    # --------------------------------------------------------------------------------------- helpers
    def _json(self, value: object, headers: Mapping[str, str] | None = None) -> None:
        body = json.dumps(value).encode()
        self._send(200, body, {"Content-Type": "application/json", **(headers or {})})

    def _error(self, code: int, error_code: str | None, message: str, extra: Mapping[str, str] | None = None) -> None:
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(extra or {})}
        if error_code:
            headers["X-Error-Code"] = error_code
        self._send(code, json.dumps({"error": message}).encode(), headers)

    def _send(self, code: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k.lower(), v)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.req.status = code
        if self.command != "HEAD" and body:
            self.wfile.write(body)
            self.req.body_bytes += len(body)

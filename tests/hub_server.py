"""A small Hugging Face Hub-compatible HTTP server on 127.0.0.1, for driving the real clients in tests.

It implements what `huggingface_hub` (with HF_HUB_DISABLE_XET=1), `transformers`, `datasets`,
`sentence-transformers` and `open_clip` use to create repos, upload (regular and Git-LFS) and download:
see shared/HUB.md. It records every request and can fail chosen requests, to test retries.

Run as a script, it hosts one command in a network namespace with only loopback (see `main`):
    unshare -n python tests/hub_server.py OUT -- python -m mmssl push RUN --repo-id org/x --endpoint {endpoint}
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet", ".pt", ".npy", ".arrow")


@dataclass
class Repo:
    kind: str  # models | datasets
    repo_id: str
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    heads: dict[str, str] = field(default_factory=lambda: {"main": "0" * 40})
    commits: list[dict] = field(default_factory=list)
    lfs_paths: set[str] = field(default_factory=set)
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit oid -> files

    def files_at(self, rev: str) -> tuple[dict[str, bytes], str] | None:
        """Files and commit oid at a branch name or a commit oid."""
        if rev in self.branches:
            return self.branches[rev], self.heads[rev]
        if rev in self.snapshots:
            return self.snapshots[rev], rev
        return None


class HubState:
    def __init__(self):
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.tokens: set[str] = set()  # bearer tokens the requests carried
        self.fail: dict[str, int] = {}  # request kind ("commit", "lfs-put", ...) -> failures still to inject
        self.echo_auth = False  # error texts repeat the request's Authorization header, as careless proxies do
        self.lock = threading.Lock()


def _sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: HubState
    base: str

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers --------------------------------------------------------------------------------
    def _body(self) -> bytes:
        return self.body

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            return self.rfile.read(length)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return b""

    def _send(self, status: int, payload=None, headers: dict | None = None, raw: bytes | None = None) -> None:
        body = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str) -> None:
        if self.state.echo_auth:
            message += f" (request had Authorization: {self.headers.get('Authorization')})"
        self._send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _should_fail(self, kind: str) -> bool:
        with self.state.lock:
            if self.state.fail.get(kind, 0) > 0:
                self.state.fail[kind] -= 1
                return True
        return False

    def _repo(self, kind: str, ns: str, name: str) -> Repo | None:
        return self.state.repos.get((kind, f"{ns}/{name}"))

    def _info(self, repo: Repo, rev: str) -> dict:
        files = repo.branches.get(rev, {})
        return {"id": repo.repo_id, "modelId": repo.repo_id, "sha": repo.heads.get(rev, "0" * 40), "private": repo.private,
                "siblings": [{"rfilename": p} for p in sorted(files)], "tags": [], "downloads": 0, "likes": 0,
                "lastModified": "2026-11-25T00:00:00.000Z", "createdAt": "2026-11-25T00:00:00.000Z", "disabled": False,
                "gated": False, "cardData": {}}

    def _entry(self, repo: Repo, path: str, data: bytes) -> dict:
        entry = {"type": "file", "path": path, "size": len(data), "oid": _sha1(data)}
        if path in repo.lfs_paths:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
        return entry

    # -- routing --------------------------------------------------------------------------------
    def do_HEAD(self):
        self._route()

    def do_GET(self):
        self._route()

    def do_POST(self):
        self._route()

    def do_PUT(self):
        self._route()

    def _route(self) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        self.body = self._read_body() if self.command in ("POST", "PUT") else b""
        self.state.requests.append((self.command, path))
        auth = self.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            self.state.tokens.add(auth[7:])
        routes = [
            ("POST", r"^/api/repos/create$", self.create_repo),
            ("POST", r"^/api/validate-yaml$", lambda: self._send(200, {"errors": [], "warnings": []})),
            ("GET", r"^/api/whoami-v2$", lambda: self._send(200, {"name": "tester", "type": "user", "orgs": [],
                                                                    "auth": {"type": "access_token"}})),
            ("POST", r"^/api/(models|datasets)/([^/]+)/([^/]+)/preupload/(.+)$", self.preupload),
            ("POST", r"^/api/(models|datasets)/([^/]+)/([^/]+)/commit/(.+)$", self.commit),
            ("POST", r"^/api/(models|datasets)/([^/]+)/([^/]+)/branch/(.+)$", self.create_branch),
            ("POST", r"^/api/(models|datasets)/([^/]+)/([^/]+)/paths-info/(.+)$", self.paths_info),
            ("GET", r"^/api/(models|datasets)/([^/]+)/([^/]+)/tree/([^/]+)/?(.*)$", self.tree),
            ("GET", r"^/api/(models|datasets)/([^/]+)/([^/]+)/commits/(.+)$", self.list_commits),
            ("GET", r"^/api/(models|datasets)/([^/]+)/([^/]+)/revision/(.+)$", self.info),
            ("GET", r"^/api/(models|datasets)/([^/]+)/([^/]+)$", lambda k, n, m: self.info(k, n, m, "main")),
            ("POST", r"^/(?:(datasets)/)?([^/]+)/([^/.]+)\.git/info/lfs/objects/batch$", self.lfs_batch),
            ("PUT", r"^/lfs-upload/([0-9a-f]{64})$", self.lfs_put),
            ("GET", r"^/(?:(datasets)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$", self.resolve),
            ("HEAD", r"^/(?:(datasets)/)?([^/]+)/([^/]+)/resolve/([^/]+)/(.+)$", self.resolve),
        ]
        for method, pattern, handler in routes:
            match = re.match(pattern, path)
            if method == self.command and match:
                try:
                    return handler(*match.groups())
                except Exception as exc:  # a bug in the test server should surface as a 500, not a hang
                    return self._error(500, "ServerError", f"{type(exc).__name__}: {exc}")
        self._error(404, "RepoNotFound", f"no route for {self.command} {path}")

    # -- endpoints ------------------------------------------------------------------------------
    def create_repo(self):
        data = json.loads(self._body() or b"{}")
        kind = (data.get("type") or "model") + "s"
        repo_id = f"{data.get('organization') or 'tester'}/{data['name']}"
        url = f"{self.base}/{'datasets/' if kind == 'datasets' else ''}{repo_id}"
        with self.state.lock:
            if (kind, repo_id) in self.state.repos:
                return self._send(409, {"error": "You already created this repo", "url": url})
            self.state.repos[(kind, repo_id)] = Repo(kind, repo_id, bool(data.get("private")))
        self._send(200, {"url": url, "name": repo_id, "id": repo_id})

    def info(self, kind, ns, name, rev):
        repo = self._repo(kind, ns, name)
        if repo is None:
            return self._error(404, "RepoNotFound", f"{ns}/{name} not found")
        at = repo.files_at(rev)
        if at is None:
            return self._error(404, "RevisionNotFound", f"revision {rev} not found")
        info = self._info(repo, rev if rev in repo.branches else "main")
        info.update({"sha": at[1], "siblings": [{"rfilename": p} for p in sorted(at[0])]})
        self._send(200, info)

    def create_branch(self, kind, ns, name, branch):
        self._body()
        repo = self._repo(kind, ns, name)
        if repo is None:
            return self._error(404, "RepoNotFound", "repo not found")
        if branch in repo.branches:
            return self._send(409, {"error": "Reference already exists"})
        repo.branches[branch] = dict(repo.branches["main"])
        repo.heads[branch] = repo.heads["main"]
        self._send(200, {})

    def preupload(self, kind, ns, name, rev):
        data = json.loads(self._body() or b"{}")
        files = [{"path": f["path"], "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES) else "regular",
                  "shouldIgnore": False} for f in data.get("files", [])]
        self._send(200, {"files": files, "commitOid": self._repo(kind, ns, name).heads.get(rev, "0" * 40)})

    def lfs_batch(self, datasets_prefix, ns, name):
        data = json.loads(self._body() or b"{}")
        objects = []
        for obj in data.get("objects", []):
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.state.lfs:
                entry["actions"] = {"upload": {"href": f"{self.base}/lfs-upload/{obj['oid']}", "header": {}}}
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects}, {"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid):
        data = self._body()
        if self._should_fail("lfs-put"):
            return self._error(500, "ServerError", "injected failure")
        if hashlib.sha256(data).hexdigest() != oid:
            return self._error(400, "BadRequest", "sha256 mismatch")
        self.state.lfs[oid] = data
        self._send(200, {})

    def commit(self, kind, ns, name, rev):
        body = self._body()
        if self._should_fail("commit"):
            return self._error(500, "ServerError", "injected failure")
        repo = self._repo(kind, ns, name)
        if repo is None:
            return self._error(404, "RepoNotFound", "repo not found")
        if rev not in repo.branches:
            return self._error(404, "RevisionNotFound", f"branch {rev} not found")
        files = dict(repo.branches[rev])
        lfs_paths = set(repo.lfs_paths)
        header = {}
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
                lfs_paths.discard(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.state.lfs:
                    return self._error(422, "BadRequest", f"LFS object {value['oid']} was never uploaded")
                files[value["path"]] = self.state.lfs[value["oid"]]
                lfs_paths.add(value["path"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                for p in [p for p in files if p.startswith(value["path"].rstrip("/") + "/")]:
                    files.pop(p)
        oid = hashlib.sha1(f"{repo.repo_id}{time.time_ns()}{len(repo.commits)}".encode()).hexdigest()
        with self.state.lock:
            repo.branches[rev] = files
            repo.lfs_paths = lfs_paths
            repo.heads[rev] = oid
            repo.snapshots[oid] = files
            repo.commits.append({"id": oid, "title": header.get("summary", ""), "message": header.get("description", ""),
                                 "branch": rev, "paths": sorted(files)})
        url = f"{self.base}/{'datasets/' if kind == 'datasets' else ''}{repo.repo_id}/commit/{oid}"
        self._send(200, {"commitUrl": url, "commitOid": oid, "success": True})

    def tree(self, kind, ns, name, rev, folder):
        repo = self._repo(kind, ns, name)
        at = repo.files_at(rev) if repo else None
        if at is None:
            return self._error(404, "RepoNotFound", "repo or revision not found")
        recursive = parse_qs(urlparse(self.path).query).get("recursive", ["false"])[0].lower() == "true"
        folder = folder.strip("/")
        prefix = f"{folder}/" if folder else ""
        entries, dirs = [], set()
        for path, data in sorted(at[0].items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix):]
            if "/" in rest and not recursive:
                dirs.add(prefix + rest.split("/")[0])
                continue
            if recursive:
                parts = rest.split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    dirs.add(prefix + "/".join(parts[:i]))
            entries.append(self._entry(repo, path, data))
        if folder and not entries and not dirs:
            return self._error(404, "EntryNotFound", f"{folder} does not exist")
        self._send(200, [{"type": "directory", "path": d, "oid": "0" * 40, "size": 0} for d in sorted(dirs)] + entries)

    def paths_info(self, kind, ns, name, rev):
        body = self._body().decode()
        if self.headers.get("Content-Type", "").startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body).get("paths", [])
        repo = self._repo(kind, ns, name)
        at = repo.files_at(rev) if repo else None
        if at is None:
            return self._error(404, "RepoNotFound", "repo or revision not found")
        files = at[0]
        out = []
        for p in paths:
            if p in files:
                out.append(self._entry(repo, p, files[p]))
            elif any(f.startswith(p.rstrip("/") + "/") for f in files):
                out.append({"type": "directory", "path": p.rstrip("/"), "oid": "0" * 40, "size": 0})
        self._send(200, out)

    def list_commits(self, kind, ns, name, rev):
        repo = self._repo(kind, ns, name)
        if repo is None:
            return self._error(404, "RepoNotFound", "repo not found")
        commits = [c for c in repo.commits if c["branch"] == rev][::-1]
        self._send(200, [{"id": c["id"], "title": c["title"], "message": c["message"], "authors": [],
                          "date": "2026-11-25T00:00:00.000Z"} for c in commits])

    def resolve(self, datasets_prefix, ns, name, rev, path):
        kind = "datasets" if datasets_prefix else "models"
        repo = self._repo(kind, ns, name)
        if repo is None:
            return self._error(404, "RepoNotFound", "repo not found")
        at = repo.files_at(rev)
        if at is None:
            return self._error(404, "RevisionNotFound", "revision not found")
        data = at[0].get(path)
        if data is None:
            return self._error(404, "EntryNotFound", f"{path} not found")
        etag = hashlib.sha256(data).hexdigest() if path in repo.lfs_paths else _sha1(data)
        headers = {"X-Repo-Commit": at[1], "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
        if path in repo.lfs_paths:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": len(data)})
        status, payload = 200, data
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start, _, end = rng[6:].partition("-")
            start = int(start or 0)
            end = int(end) if end else len(data) - 1
            payload = data[start : end + 1]
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self._send(status, raw=payload, headers=headers)


class HubServer:
    """Start with `with HubServer() as hub:`; `hub.url` is the endpoint, `hub.state` what it recorded."""

    def __init__(self):
        self.state = HubState()
        handler = type("BoundHandler", (Handler,), {"state": self.state})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        handler.base = self.url
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def files(self, repo_id: str, kind: str = "models", rev: str = "main") -> dict[str, bytes]:
        return self.state.repos[(kind, repo_id)].branches[rev]


# -- a command in a network namespace where only this server exists ------------------------------------------------
AUDIT = """import json, os, sys
def _audit(event, args, _log=os.environ["HUB_SERVER_NETLOG"]):
    if event in ("socket.connect", "socket.getaddrinfo"):
        target = args[1] if event == "socket.connect" else args[:2]
        with open(_log, "a") as f:
            f.write(json.dumps([event, target if isinstance(target, str) else list(target)], default=str) + "\\n")
sys.addaudithook(_audit)
"""


def loopback_up() -> None:
    """`ip link set lo up` without iproute2 (SIOCGIFFLAGS / SIOCSIFFLAGS on a struct ifreq)."""
    import fcntl
    import socket
    import struct

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        flags = struct.unpack("16sH", fcntl.ioctl(sock, 0x8913, struct.pack("16sH22x", b"lo", 0))[:18])[1]
        fcntl.ioctl(sock, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1))


def main(argv: list[str]) -> int:
    """`hub_server.py OUT -- CMD...`: bring loopback up, start the server, run CMD (each `{endpoint}` replaced by the
    server's URL; stdout/stderr passed through; Python children audited) and exit with its code. Writes
    OUT/hub.json (requests, tokens, commits, files per repo, every socket connect/getaddrinfo of the command) and
    each stored file under OUT/repos/<models|datasets>/<namespace>/<name>/<path>."""
    out, command = Path(argv[0]), argv[argv.index("--") + 1:]
    loopback_up()
    with HubServer() as hub, tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "sitecustomize.py").write_text(AUDIT)
        netlog = Path(tmp) / "net.jsonl"
        netlog.touch()
        env = {**os.environ, "HUB_SERVER_NETLOG": str(netlog),
               "PYTHONPATH": os.pathsep.join(filter(None, [tmp, os.environ.get("PYTHONPATH")]))}
        code = subprocess.run([arg.replace("{endpoint}", hub.url) for arg in command], env=env).returncode
        repos = {}
        for (kind, repo_id), repo in hub.state.repos.items():
            repos[f"{kind}/{repo_id}"] = {"commits": repo.commits, "lfs_paths": sorted(repo.lfs_paths),
                                          "files": sorted(repo.branches["main"])}
            for path, data in repo.branches["main"].items():
                target = out / "repos" / kind / repo_id / path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        record = {"url": hub.url, "requests": hub.state.requests, "tokens": sorted(hub.state.tokens), "repos": repos,
                  "network": [json.loads(line) for line in netlog.read_text().splitlines()]}
    out.mkdir(parents=True, exist_ok=True)
    (out / "hub.json").write_text(json.dumps(record, indent=1))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

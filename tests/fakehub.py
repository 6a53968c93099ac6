"""A local stand-in for the Hugging Face hub: the HTTP endpoints huggingface_hub 2.x calls, nothing more.

Read from huggingface_hub's source (snapshot_download, hf_hub_download, HfApi.create_repo,
HfApi.upload_folder with Xet disabled):

  download  GET  /api/models/{repo}/revision/{rev}          model info: the commit sha a revision names
            GET  /api/models/{repo}/tree/{sha}?recursive=    file listing (cached by the client per commit)
            HEAD /{repo}/resolve/{sha}/{path}                 X-Repo-Commit, ETag, Content-Length
            GET  /{repo}/resolve/{sha}/{path}                 the bytes (Range: resumes)
  upload    POST /api/repos/create                           409 when it exists (exist_ok=True accepts it)
            POST /api/validate-yaml                          the README.md front matter must be valid YAML
            POST /api/models/{repo}/preupload/{rev}          "lfs" for binary files, else "regular"
            POST /{repo}.git/info/lfs/objects/batch          LFS batch: where to PUT each object
            PUT  /__lfs/{oid}                                 the object (sha256 checked)
            POST /__lfs/verify                               LFS verify
            POST /api/models/{repo}/commit/{rev}             NDJSON: header, file (base64), lfsFile (oid)
  either    GET  /api/agent-harnesses                        read by huggingface_hub's User-Agent builder

Any other request is answered 404 and kept in `unexpected`, so a test can assert nothing else was
asked. Every request is logged (`requests`). The server is a daemon thread on 127.0.0.1 at a free
port; leaving the `with` block (or the process ending) stops it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".onnx", ".npz", ".bin", ".msgpack", ".h5", ".pt")
HARNESSES = {"standardEnvVars": [], "harnesses": {}}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str  # unquoted
    query: dict[str, list[str]]
    authorization: str | None


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> {path: bytes}
    refs: dict[str, str] = field(default_factory=dict)
    private: bool = False
    log: list[dict[str, Any]] = field(default_factory=list)  # commits received: message, added paths


def blob_oid(data: bytes) -> str:
    """git's blob id: what the hub reports as `oid` / ETag for a regular file."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def commit_sha(files: dict[str, bytes], parent: str | None) -> str:
    listing = json.dumps([parent, sorted((p, hashlib.sha256(b).hexdigest()) for p, b in files.items())])
    return hashlib.sha1(listing.encode()).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


class FakeHub:
    """The hub's state plus the server; `with FakeHub() as hub:` runs it."""

    def __init__(self, tokens: tuple[str, ...] = ("hf_test_write_token",)) -> None:
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}
        self.tokens = set(tokens)
        self.requests: list[Seen] = []
        self.unexpected: list[Seen] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fakehub", daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # --- state ---------------------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: dict[str, bytes], *, ref: str = "main") -> str:
        """Commit `files` as the new state of `ref` (creating the repo); returns the commit sha."""
        repo = self.repos.setdefault(repo_id, Repo())
        parent = repo.refs.get(ref)
        sha = commit_sha(files, parent)
        repo.commits[sha] = dict(files)
        repo.refs[ref] = sha
        for path, data in files.items():
            if is_lfs(path):
                self.lfs[hashlib.sha256(data).hexdigest()] = data
        return sha

    def add_dir(self, repo_id: str, directory: Path, extra: dict[str, bytes] | None = None) -> str:
        files = {p.relative_to(directory).as_posix(): p.read_bytes() for p in sorted(directory.rglob("*"))
                 if p.is_file()}
        return self.add_repo(repo_id, {**files, **(extra or {})})

    def head(self, repo_id: str, ref: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.refs[ref]]

    def resolve_requests(self, method: str | None = None) -> list[Seen]:
        """Requests for file contents or metadata (/resolve/): what a cache hit must not make."""
        with self.lock:
            return [r for r in self.requests if "/resolve/" in r.path and (method is None or r.method == method)]

    def clear_log(self) -> None:
        with self.lock:
            self.requests.clear()
            self.unexpected.clear()

    def _commit(self, repo_id: str, ref: str, lines: list[dict[str, Any]]) -> str:
        repo = self.repos[repo_id]
        parent = repo.refs.get(ref)
        files = dict(repo.commits.get(parent, {})) if parent else {}
        header, added = {}, []
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                header = value
            elif key == "file":
                assert value["encoding"] == "base64", value
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs:
                    raise KeyError(f"LFS object {value['oid']} for {value['path']} was never uploaded")
                files[value["path"]] = self.lfs[value["oid"]]
                added.append(value["path"])
            elif key in ("deletedFile", "deletedFolder"):
                files.pop(value["path"], None)
            else:
                raise KeyError(f"unknown commit line {key!r}")
        sha = commit_sha(files, parent)
        repo.commits[sha] = files
        repo.refs[ref] = sha
        repo.log.append({"summary": header.get("summary"), "added": sorted(added)})
        return sha


ROUTES = [
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/revision/(?P<rev>.+)$"), "model_info"),
    ("GET", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/tree/(?P<rev>[^/]+)$"), "tree"),
    ("HEAD", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "harnesses"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(r"^/(?P<repo>[^/]+/[^/]+)\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/__lfs/(?P<oid>[0-9a-f]{64})$"), "lfs_put"),
    ("POST", re.compile(r"^/__lfs/verify$"), "lfs_verify"),
    ("POST", re.compile(r"^/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)$"), "commit"),
]
# Need the write token. The LFS PUT does not: like a pre-signed storage URL, it carries no credentials.
WRITE = {"create_repo", "preupload", "lfs_batch", "lfs_verify", "commit"}


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: no keep-alive bookkeeping

        def log_message(self, *_: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def do_PUT(self) -> None:
            self._dispatch("PUT")

        # --- plumbing ------------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            url = urlsplit(self.path)
            seen = Seen(method, unquote(url.path), parse_qs(url.query), self.headers.get("authorization"))
            with hub.lock:
                hub.requests.append(seen)
            self.body = self._read_body() if method in ("POST", "PUT") else b""
            for m, pattern, name in ROUTES:
                match = pattern.match(url.path)
                if m == method and match:
                    args = {k: unquote(v) for k, v in match.groupdict().items()}
                    if name in WRITE and not self._authorized():
                        return self._error(401, None, "Invalid credentials in Authorization header")
                    return getattr(self, name)(**args)
            with hub.lock:
                hub.unexpected.append(seen)
            self._error(404, "NotImplementedInFakeHub", f"{method} {url.path}")

        def _read_body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _authorized(self) -> bool:
            auth = self.headers.get("authorization") or ""
            return auth.startswith("Bearer ") and auth[len("Bearer "):] in hub.tokens

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps(obj).encode(), headers)

        def _error(self, status: int, code: str | None, message: str) -> None:
            headers = {"X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._json({"error": message}, status, headers)

        def _commit_of(self, repo_id: str, rev: str) -> str | None:
            """A revision -> commit sha; answers the error itself and returns None when there is none."""
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound", f"Repository not found: {repo_id}")
                return None
            sha = rev if rev in repo.commits else repo.refs.get(rev)
            if sha is None:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return sha

        # --- download ------------------------------------------------------------------------
        def model_info(self, repo: str, rev: str) -> None:
            sha = self._commit_of(repo, rev)
            if sha:
                files = hub.repos[repo].commits[sha]
                self._json({"id": repo, "sha": sha, "private": hub.repos[repo].private,
                            "siblings": [{"rfilename": p} for p in sorted(files)]})

        def tree(self, repo: str, rev: str) -> None:
            sha = self._commit_of(repo, rev)
            if not sha:
                return
            entries = []
            for path, data in sorted(hub.repos[repo].commits[sha].items()):
                entry: dict[str, Any] = {"type": "file", "path": path, "size": len(data), "oid": blob_oid(data)}
                if is_lfs(path):
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._json(entries)

        def resolve(self, repo: str, rev: str, path: str) -> None:
            sha = self._commit_of(repo, rev)
            if not sha:
                return
            data = hub.repos[repo].commits[sha].get(path)
            if data is None:
                self._send(404, b"{}", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": sha})
                return
            etag = hashlib.sha256(data).hexdigest() if is_lfs(path) else blob_oid(data)
            headers = {"X-Repo-Commit": sha, "ETag": f'"{etag}"', "Accept-Ranges": "bytes"}
            start = 0
            rng = re.match(r"bytes=(\d+)-$", self.headers.get("range") or "")
            if rng and self.command == "GET":
                start = int(rng.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            self._send(206 if start else 200, data[start:], headers, "application/octet-stream")

        def harnesses(self) -> None:
            self._json(HARNESSES)

        # --- upload --------------------------------------------------------------------------
        def create_repo(self) -> None:
            payload = json.loads(self.body)
            repo_id = f"{payload['organization']}/{payload['name']}"
            if repo_id in hub.repos:
                return self._json({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"},
                                  409)
            hub.repos[repo_id] = Repo(private=payload.get("visibility") == "private")
            hub.add_repo(repo_id, {})
            self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id})

        def validate_yaml(self) -> None:
            import yaml

            content = json.loads(self.body)["content"]
            match = re.match(r"^---\n(.*?)\n---\n", content, re.DOTALL)
            errors = []
            try:
                meta = yaml.safe_load(match.group(1)) if match else {}
            except yaml.YAMLError as e:
                meta, errors = {}, [f"invalid YAML: {e}"]
            if not isinstance(meta, dict):
                errors.append("metadata must be a mapping")
                meta = {}
            for key in ("license", "library_name", "pipeline_tag"):
                if key in meta and not isinstance(meta[key], str):
                    errors.append(f'"{key}" must be a string')
            tags = meta.get("tags", [])
            if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                errors.append('"tags" must be an array of strings')
            if "base_model" in meta and not isinstance(meta["base_model"], (str, list)):
                errors.append('"base_model" must be a string or an array of strings')
            self._json({"errors": [{"message": e} for e in errors], "warnings": []}, 400 if errors else 200)

        def preupload(self, repo: str, rev: str) -> None:
            if self._commit_of(repo, rev) is None:
                return
            files = json.loads(self.body)["files"]
            self._json({"files": [{"path": f["path"], "uploadMode": "lfs" if is_lfs(f["path"]) else "regular",
                                   "shouldIgnore": False, "oid": None} for f in files]})

        def lfs_batch(self, repo: str) -> None:
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", f"Repository not found: {repo}")
            payload = json.loads(self.body)
            objects = []
            for obj in payload["objects"]:
                entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
                if obj["oid"] not in hub.lfs:
                    entry["actions"] = {"upload": {"href": f"{hub.url}/__lfs/{obj['oid']}", "header": {}},
                                        "verify": {"href": f"{hub.url}/__lfs/verify"}}
                objects.append(entry)
            self._json({"transfer": "basic", "objects": objects})

        def lfs_put(self, oid: str) -> None:
            if hashlib.sha256(self.body).hexdigest() != oid:
                return self._error(400, None, f"content does not hash to {oid}")
            with hub.lock:
                hub.lfs[oid] = self.body
            self._json({})

        def lfs_verify(self) -> None:
            obj = json.loads(self.body)
            ok = obj["oid"] in hub.lfs and len(hub.lfs[obj["oid"]]) == obj["size"]
            self._json({"success": ok}, 200 if ok else 404)

        def commit(self, repo: str, rev: str) -> None:
            if repo not in hub.repos:
                return self._error(404, "RepoNotFound", f"Repository not found: {repo}")
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
            try:
                with hub.lock:
                    sha = hub._commit(repo, rev, lines)
            except KeyError as e:
                return self._error(422, None, str(e))
            self._json({"commitUrl": f"{hub.url}/{repo}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None})

    return Handler


def point_huggingface_hub_at(mp: Any, *, endpoint: str, hf_home: Path, offline: bool,
                             token: str | None = None) -> None:
    """Aim huggingface_hub at `endpoint` with its cache, token and settings under `hf_home`.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE, ... once, when it is imported, into
    `huggingface_hub.constants` (and derived values such as HUGGINGFACE_CO_URL_TEMPLATE); the
    library then reads those module attributes at call time. So the environment (for subprocesses)
    and the constants (for this process) are both set, with `mp` (pytest's monkeypatch) undoing it.
    Xet is turned off as HF_HUB_DISABLE_XET=1 would: this fake speaks the HTTP/LFS protocol only.
    """
    from huggingface_hub import constants

    hub_cache = hf_home / "hub"
    env = {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1" if offline else "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key, value in env.items():
        mp.setenv(key, value)
    for key in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_TOKEN_PATH", "TRANSFORMERS_OFFLINE",
                "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        mp.delenv(key, raising=False)
    if token:
        mp.setenv("HF_TOKEN", token)
    else:
        mp.delenv("HF_TOKEN", raising=False)
    values = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(hf_home),
        "HF_HUB_CACHE": str(hub_cache),
        "HUGGINGFACE_HUB_CACHE": str(hub_cache),
        "HF_ASSETS_CACHE": str(hf_home / "assets"),
        "HF_XET_CACHE": str(hf_home / "xet"),
        "HF_TOKEN_PATH": str(hf_home / "token"),
        "HF_STORED_TOKENS_PATH": str(hf_home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(hf_home / ".agent_harnesses.json"),
        "HF_HUB_OFFLINE": offline,
        "HF_HUB_DISABLE_XET": True,
    }
    for key, value in values.items():
        assert hasattr(constants, key), f"huggingface_hub.constants.{key} moved: update point_huggingface_hub_at"
        mp.setattr(constants, key, value)

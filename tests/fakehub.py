"""A minimal Hugging Face Hub on 127.0.0.1 for huggingface_hub's real client: the
endpoints `create_repo`, `repo_info`, `list_repo_tree`, `create_commit` (preupload,
README validation, LFS batch and basic upload, the NDJSON commit) and downloads
(`resolve/`) use, answered from memory. Writes need `Authorization: Bearer <token>`;
a private repo is read only with it, a gated one's files not even with it (its listing
is public), and any other token is refused as the Hub refuses it (401, "Invalid
credentials"). `.safetensors` files are LFS, the rest regular. `FakeHub.fault` makes
requests fail (an HTTP status, a file's bytes damaged in transit, something done first).
It knows nothing else (no xet: tests set HF_HUB_DISABLE_XET)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

REPO = r"(?P<repo>[^/]+/[^/]+)"
TOKEN = "hf_test_token"  # what the `fake_hub` fixture (conftest.py) serves writes for


@dataclass
class Repo:
    private: bool
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)  # sha -> files
    head: str = ""
    gated: bool = False  # listed to anyone, its files to no one (no access was granted)

    def files(self, rev: str) -> dict[str, bytes] | None:
        return self.commits.get(self.head if rev == "main" else rev)


@dataclass
class Fault:
    """What a request whose method and path match answers instead (`FakeHub.fault`)."""

    path: str  # a regex searched in the request's path
    method: str = "*"
    status: int | None = None  # answer this, with `headers` and `body`
    headers: dict = field(default_factory=dict)
    body: dict = field(default_factory=lambda: {"error": "fault"})
    corrupt: bool = False  # serve the file with one byte changed (damaged in transit)
    action: Callable[[], None] | None = None  # done first (another client's push), then answered as usual
    times: int | None = None  # the requests it answers; None: all

    def take(self, method: str, path: str) -> bool:
        if self.method not in ("*", method) or not re.search(self.path, path) or self.times == 0:
            return False
        if self.times is not None:
            self.times -= 1
        return True


def blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def is_lfs(path: str) -> bool:
    return path.endswith(".safetensors")


class FakeHub:
    def __init__(self, token: str = TOKEN):
        self.token = token
        self.repos: dict[str, Repo] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 -> content
        self.requests: list[tuple[str, str]] = []  # (method, path)
        self.faults: list[Fault] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        # a short poll: close() waits for it (at the default 0.5 s, that was most of a hub test's time)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def fault(self, path: str, **how) -> Fault:
        """Requests whose path `path` (a regex) matches fail as `how` (Fault's fields) says."""
        fault = Fault(path, **how)
        self.faults.append(fault)
        return fault

    def take_fault(self, method: str, path: str) -> Fault | None:
        return next((f for f in self.faults if f.take(method, path)), None)

    def commit(self, name: str, files: dict[str, bytes], parent: str | None = None, deleted: tuple = ()) -> str:
        repo = self.repos[name]
        sha = hashlib.sha1(f"{name}{len(repo.commits)}{sorted(files)}{sorted(deleted)}".encode()).hexdigest()
        kept = {k: v for k, v in repo.commits.get(repo.head, {}).items() if k not in deleted}
        repo.commits[sha] = {**kept, **files}
        repo.head = sha
        return sha


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def reply(self, status: int, body: object = None, headers: dict | None = None, raw: bytes | None = None):
            data = raw if raw is not None else json.dumps(body if body is not None else {}).encode()
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def authed(self) -> bool:
            return self.headers.get("Authorization") == f"Bearer {hub.token}"

        def body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def readable(self, name: str) -> Repo | None:
            repo = hub.repos.get(name)
            if repo is None or (repo.private and not self.authed()):
                status = 401 if not self.authed() else 404
                self.reply(status, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
                return None
            return repo

        def refused(self, path: str) -> bool:
            """Whether the request was answered already: a token that is not the Hub's, or a fault."""
            auth = self.headers.get("Authorization")
            if auth is not None and auth != f"Bearer {hub.token}":
                message = "Invalid credentials in Authorization header"
                self.reply(401, {"error": message}, {"X-Error-Message": message})
                return True
            fault = hub.take_fault(self.command, path)
            self.fault = fault
            if fault is not None and fault.action is not None:
                fault.action()
            if fault is not None and fault.status is not None:
                self.reply(fault.status, fault.body, fault.headers)
                return True
            return False

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            if self.refused(path):
                return
            if m := re.fullmatch(rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", path):
                if (repo := self.readable(m["repo"])) is None:
                    return
                rev = m["rev"] or "main"
                sha = repo.head if rev == "main" else rev
                files = repo.files(rev) or {}
                siblings = [{"rfilename": p} for p in sorted(files)]
                self.reply(200, {"id": m["repo"], "sha": sha, "private": repo.private, "siblings": siblings})
            elif m := re.fullmatch(rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?P<sub>/.*)?", path):
                if (repo := self.readable(m["repo"])) is None:
                    return
                entries = []
                for p, data in sorted((repo.files(m["rev"]) or {}).items()):
                    entry: dict = {"type": "file", "oid": blob_id(data), "size": len(data), "path": p}
                    if is_lfs(p):
                        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 130}
                    entries.append(entry)
                self.reply(200, entries)
            elif m := re.fullmatch(rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<file>.+)", path):
                if (repo := self.readable(m["repo"])) is None:
                    return
                if repo.gated:
                    message = f"Access to model {m['repo']} is restricted and you are not in the authorized list."
                    status = 403 if self.authed() else 401
                    self.reply(status, {"error": message}, {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
                    return
                files = repo.files(m["rev"]) or {}
                if m["file"] not in files:
                    self.reply(404, {"error": "Entry not found"}, {"X-Error-Code": "EntryNotFound"})
                    return
                data = files[m["file"]]
                etag = hashlib.sha256(data).hexdigest() if is_lfs(m["file"]) else blob_id(data)
                if self.fault is not None and self.fault.corrupt and self.command == "GET" and data:
                    data = bytes([data[0] ^ 1]) + data[1:]  # the etag and length of the true bytes
                sha = repo.head if m["rev"] == "main" else m["rev"]
                self.reply(200, raw=data, headers={"ETag": f'"{etag}"', "X-Repo-Commit": sha})
            else:
                self.reply(404, {"error": f"no route {path}"})

        def do_PUT(self) -> None:
            path = urlsplit(self.path).path
            hub.requests.append(("PUT", path))
            data = self.body()
            oid = path.rsplit("/", 1)[-1]
            if hashlib.sha256(data).hexdigest() != oid:
                self.reply(400, {"error": "sha256 mismatch"})
                return
            hub.lfs[oid] = data
            self.reply(200, {})

        def do_POST(self) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append(("POST", path))
            body = self.body()
            if self.refused(path):
                return
            if path == "/api/validate-yaml":
                self.reply(200, {"errors": [], "warnings": []})
                return
            if not self.authed():
                self.reply(401, {"error": "Invalid credentials in Authorization header"})
                return
            if path == "/api/repos/create":
                req = json.loads(body)
                name = f"{req['organization']}/{req['name']}"
                if name in hub.repos:
                    self.reply(409, {"error": "You already created this model repo", "url": f"{hub.url}/{name}"})
                    return
                hub.repos[name] = Repo(private=req.get("visibility") == "private")
                hub.commit(name, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"})
                self.reply(200, {"url": f"{hub.url}/{name}", "name": name})
            elif m := re.fullmatch(rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", path):
                if self.readable(m["repo"]) is None:
                    return
                files = [
                    {"path": f["path"], "uploadMode": "lfs" if is_lfs(f["path"]) else "regular", "shouldIgnore": False}
                    for f in json.loads(body)["files"]
                ]
                self.reply(200, {"files": files, "commitOid": hub.repos[m["repo"]].head})
            elif m := re.fullmatch(rf"/{REPO}\.git/info/lfs/objects/batch", path):
                objects = []
                for o in json.loads(body)["objects"]:
                    entry = {"oid": o["oid"], "size": o["size"]}
                    if o["oid"] not in hub.lfs:
                        entry["actions"] = {"upload": {"href": f"{hub.url}/lfs-upload/{o['oid']}"}}
                    objects.append(entry)
                self.reply(200, {"transfer": "basic", "objects": objects})
            elif m := re.fullmatch(rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", path):
                if (repo := self.readable(m["repo"])) is None:
                    return
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                header = next(x["value"] for x in lines if x["key"] == "header")
                if header.get("parentCommit") not in (None, repo.head):
                    self.reply(412, {"error": "parent commit is not the head"})
                    return
                files, deleted = {}, []
                for x in lines:
                    v = x["value"]
                    if x["key"] == "deletedFile":
                        deleted.append(v["path"])
                    elif x["key"] == "file":
                        files[v["path"]] = base64.b64decode(v["content"])
                    elif x["key"] == "lfsFile":
                        if v["oid"] not in hub.lfs:
                            self.reply(422, {"error": f"LFS object {v['oid']} was never uploaded"})
                            return
                        files[v["path"]] = hub.lfs[v["oid"]]
                sha = hub.commit(m["repo"], files, deleted=tuple(deleted))
                self.reply(
                    200, {"commitUrl": f"{hub.url}/{m['repo']}/commit/{sha}", "commitOid": sha, "pullRequestUrl": None}
                )
            else:
                self.reply(404, {"error": f"no route {path}"})

    return Handler

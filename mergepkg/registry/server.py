"""`mergepkg registry serve`: a registry folder over HTTP, with token-guarded writes.

A WSGI app served by waitress (a maintained, pure-Python production server):

- `GET|HEAD /<path>`: the static layout (index.py), with an ETag per file and 304 for
  a matching If-None-Match. Paths are checked part by part: nothing starting with `.`
  (so `..` and the private `.mergepkg/` folder are out), nothing outside the folder.
- `POST /api/v1/publish` `{"recipe": TOML text, "lock": TOML text or null}` and
  `POST /api/v1/yank` `{"name", "version", "yanked": bool}`: only with
  `Authorization: Bearer <token>` whose scopes and package patterns allow it (401
  without one, 403 for a wrong, expired or narrower one: `tokens.py`); 413 above the
  size limit, 400 for malformed or invalid uploads, 409 for a published version with
  other content. Writes go through `RegistryFolder`, so they are atomic, two
  publishes at once both land, and each is in the audit log (`audit.py`).
- `GET|HEAD /`, `/?q=TEXT`, `/packages/NAME/[VERSION/]`: the web pages (`site.py`),
  HTML with ETags; an unknown package or version is an HTML 404.
- A private registry (`registry init --private`) answers reads only with a token that
  has the `read` scope.

Under abuse (`Limits`): a connection that does not finish sending a request within
`request_seconds` is closed, as is one idle for `idle_seconds`; one client address
holds at most `per_client` connections and the server `total`. Error bodies never
name a path on the server.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import filelock
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher

from mergepkg.errors import MergepkgError, PublishError
from mergepkg.lockfile import Lock, parse_lock
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.names import canonical_name
from mergepkg.recipe.plan import make_plan
from mergepkg.registry import tokens
from mergepkg.registry.dependencies import Dependencies
from mergepkg.registry.folder import RegistryFolder, check_lock_current, parse_published
from mergepkg.registry.index import MAX_RECIPE_BYTES, recipe_path
from mergepkg.registry.site import WebPages

MAX_BODY = 2 * MAX_RECIPE_BYTES + 4096  # a recipe, its lock and the JSON around them
UPLOAD = "/upload/recipe.toml"  # what an uploaded recipe is called in errors: no path of the server's
UPLOAD_LOCK = "/upload/recipe.lock"  # and its lock
STATUS = {
    200: "OK",
    201: "Created",
    301: "Moved Permanently",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class App:
    def __init__(self, root: Path):
        self.folder = RegistryFolder(Path(root).resolve())
        self.private = bool(self.folder.config().get("private"))  # refuses a folder that is not a registry
        self.pages = WebPages(self.folder.root)

    def __call__(self, environ, start_response):
        """The answer; to HEAD, its headers only, whatever the answer (waitress sends what
        the app returns, and a body there would be read as the next response)."""
        answer = self.answer(environ, start_response)
        return [b""] if environ["REQUEST_METHOD"] == "HEAD" else answer

    def answer(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if path.startswith("/api/v1/"):
            if method != "POST":
                return _json(start_response, 405, {"error": "use POST"}, "POST")
            status, body = self.write(path[len("/api/v1/") :], environ)
            return _json(start_response, status, self.public(body))
        if method not in ("GET", "HEAD"):
            return _json(
                start_response,
                405,
                {"error": "the index is read-only; writes go to /api/v1/"},
                "GET, HEAD",
            )
        if self.private:
            try:
                tokens.authorize(self.folder.root, _bearer(environ), "read")
            except PublishError as e:
                return _json(start_response, e.status, self.public({"error": e.message, "hint": e.hint}))
            except MergepkgError as e:
                return _json(start_response, 500, self.public({"error": f"the token file cannot be read: {e.message}"}))
        if WebPages.handles(path):
            return self.page(path, environ, start_response)
        return self.read(path, environ, start_response)

    def public(self, body: dict) -> dict:
        """`body` without any path of this machine: the folder served and the working directory."""
        places = sorted({str(self.folder.root), os.getcwd()}, key=len, reverse=True)

        def scrub(text: object) -> object:
            if not isinstance(text, str):
                return text
            for place in places:
                text = text.replace(place + "/", "").replace(place, ".")
            return text

        return {k: scrub(v) for k, v in body.items()}

    # -- reads ---------------------------------------------------------------------
    def page(self, path: str, environ, start_response):
        """A web page (`site.py`): HTML for browsers, 404s included."""
        host = environ.get("HTTP_HOST") or f"{environ.get('SERVER_NAME', 'localhost')}:{environ.get('SERVER_PORT', '')}"
        url = f"{environ.get('wsgi.url_scheme', 'http')}://{host}"
        try:
            status, data, location = self.pages.respond(path, environ.get("QUERY_STRING", ""), url)
        except (MergepkgError, OSError, ValueError) as e:
            return _json(start_response, 500, self.public({"error": f"the registry cannot be read: {e}"}))
        if location:
            start_response(f"{status} {STATUS[status]}", [("Location", _quoted(location)), ("Content-Length", "0")])
            return [b""]
        return _send(start_response, environ, status, data, "text/html; charset=utf-8")

    def read(self, path: str, environ, start_response):
        parts = path.strip("/").split("/")
        if not all(parts) or any(p.startswith(".") or "\x00" in p for p in parts):
            return _json(start_response, 404, {"error": "not found"})
        file = self.folder.root.joinpath(*parts)
        try:
            if not file.resolve().is_relative_to(self.folder.root) or not file.is_file():
                return _json(start_response, 404, {"error": "not found"})
            data = file.read_bytes()
        except (OSError, ValueError):
            return _json(start_response, 404, {"error": "not found"})
        kind = (
            "application/json"
            if file.suffix in (".json", ".jsonl")
            else "application/toml"
            if file.suffix == ".toml"
            else mimetypes.guess_type(file.name)[0] or "text/plain"
        )
        return _send(start_response, environ, 200, data, kind)

    # -- writes --------------------------------------------------------------------
    def write(self, action: str, environ) -> tuple[int, dict]:
        if action not in ("publish", "yank"):
            return 404, {"error": f"no action {action!r}; expected publish or yank"}
        token = _bearer(environ)
        try:
            tokens.authorize(self.folder.root, token, action)  # may it do this at all (the package comes later)
        except PublishError as e:
            return e.status, {"error": e.message, "hint": e.hint}
        except MergepkgError as e:
            return 500, {"error": f"the registry's token file cannot be read: {e.message}"}
        try:
            length = int(environ.get("CONTENT_LENGTH") or -1)
        except ValueError:
            length = -1
        if length < 0:
            return 411, {"error": "Content-Length is required"}
        if length > MAX_BODY:
            return 413, {"error": f"the upload is {length} bytes; the limit is {MAX_BODY}"}
        try:
            payload = json.loads(environ["wsgi.input"].read(length))
            if not isinstance(payload, dict):
                raise ValueError("expected a JSON object")
            source = environ.get("REMOTE_ADDR", "?")
            return self.publish(payload, token, source) if action == "publish" else self.yank(payload, token, source)
        except MergepkgError as e:  # first: some are ValueErrors too
            status = e.status if isinstance(e, PublishError) else 400
            return status, {"error": e.located, "hint": e.hint}
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return 400, {"error": f"malformed upload: {e}"}
        except filelock.Timeout:  # an OSError too: first
            return 503, {"error": "the registry is busy with other writes; try again"}
        except OSError as e:  # the folder's own files: a JSON 500 naming no path, not waitress's page
            return 500, {"error": f"the registry's files cannot be read or written: {e.strerror or type(e).__name__}"}

    def publish(self, payload: dict, token: str, source: str) -> tuple[int, dict]:
        recipe_text, lock_text = payload.get("recipe"), payload.get("lock")
        if not isinstance(recipe_text, str) or not (lock_text is None or isinstance(lock_text, str)):
            raise ValueError('expected {"recipe": "<TOML text>", "lock": "<TOML text>" or null}')
        data = recipe_text.encode("utf-8")
        recipe = parse_published(data, UPLOAD)
        who = tokens.authorize(self.folder.root, token, "publish", canonical_name(recipe.name))
        make_plan(recipe)  # cycles and references, as the publisher's own check did
        self.folder.check_dependencies(recipe)
        if lock_text:  # as `RegistryFolder.publish` reads it: "" is no lock
            lock = parse_lock(lock_text, UPLOAD_LOCK)
            flat = self.locked_recipe(recipe, lock)
            if flat is not None:
                check_lock_current(lock, flat, UPLOAD_LOCK, "recipe.toml")
        entry, new = self.folder.publish(recipe, data, lock_text, who=who, source=source)
        return (201 if new else 200), {"entry": json.loads(entry.to_json()), "published": new}

    def locked_recipe(self, recipe: Recipe, lock: Lock) -> Recipe | None:
        """`recipe` with its dependencies' steps joined in from this folder's files, as the
        publisher's `mergepkg lock` joined them: at the versions the lock names (same sha256),
        else the newest here that fits. None where one is not here (another registry's):
        then only the publisher's own `publish` could check the lock against the recipe."""
        files = {}
        for name, pick in lock.dependencies.items():
            if any(e.version == pick.version and e.sha256 == pick.sha256 for e in self.folder.entries(name)):
                files[name] = self.folder.root / recipe_path(name, pick.version)
        for name, dep in recipe.dependencies.items():
            if name in files or dep.registry is not None:
                continue
            best = self.folder.newest_fit(dep)  # there: `check_dependencies` came first (None: yanked since)
            if best is not None:
                files[name] = self.folder.root / recipe_path(name, best.version)
        deps = Dependencies(files=files)

        def bind(r: Recipe) -> Recipe:
            if any(s.dependency and s.dependency not in files for s in r.sources.values()):
                raise _NotHere
            return deps.bind(r)

        try:
            return flatten(recipe, bind=bind)
        except _NotHere:
            return None

    def yank(self, payload: dict, token: str, source: str) -> tuple[int, dict]:
        name, version, yanked = payload.get("name"), payload.get("version"), payload.get("yanked", True)
        if not isinstance(name, str) or not isinstance(version, str) or not isinstance(yanked, bool):
            raise ValueError('expected {"name": str, "version": str, "yanked": bool}')
        who = tokens.authorize(self.folder.root, token, "yank", canonical_name(name))
        entry = self.folder.yank(name, version, yanked, who=who, source=source)
        return 200, {"entry": json.loads(entry.to_json())}


class _NotHere(Exception):
    """A dependency whose recipe file this registry does not hold (`App.locked_recipe`)."""


def _json(start_response, status: int, body: dict, allow: str = ""):
    """A JSON answer; `allow`: the methods a 405 names."""
    data = (json.dumps({k: v for k, v in body.items() if v is not None}) + "\n").encode()
    start_response(
        f"{status} {STATUS.get(status, '')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        + ([("Allow", allow)] if allow else []),
    )
    return [data]


def _quoted(location: str) -> str:
    """A redirect's path as a header holds it: percent-encoded. PATH_INFO is the request's
    bytes read as latin-1 (PEP 3333), so those bytes are what is encoded."""
    try:
        raw = location.encode("latin-1")
    except UnicodeEncodeError:
        raw = location.encode("utf-8")
    return quote(raw, safe="/!$&'()*+,;=:@-._~")


def _matches(wanted: str, etag: str) -> bool:
    """If-None-Match against our ETag, by weak comparison as RFC 9110 says: `W/"x"` matches `"x"`."""
    tags = [t.strip().removeprefix("W/") for t in wanted.split(",")]
    return wanted.strip() == "*" or etag in tags


def _send(start_response, environ, status: int, data: bytes, kind: str):
    """`data` with an ETag, or 304 for a matching If-None-Match (to a HEAD, `App.__call__`
    sends the headers only, Content-Length the body's)."""
    etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
    if status == 200 and _matches(environ.get("HTTP_IF_NONE_MATCH", ""), etag):
        start_response("304 Not Modified", [("ETag", etag)])
        return [b""]
    start_response(
        f"{status} {STATUS.get(status, '')}",
        [("Content-Type", kind), ("Content-Length", str(len(data))), ("ETag", etag), ("Cache-Control", "no-cache")],
    )  # revalidate each time: cheap with ETag
    return [data]


def _bearer(environ) -> str:
    auth = environ.get("HTTP_AUTHORIZATION", "")
    return auth[7:].strip() if auth.startswith("Bearer ") else ""


@dataclass(frozen=True)
class Limits:
    """What one client may hold of the server (docs/registry.md#limits)."""

    request_seconds: float = 30.0  # to send a request's headers and body, from its first byte
    idle_seconds: float = 15.0  # a connection with no request in flight is closed after this
    per_client: int = 16  # connections from one address at once; more are closed on accept
    total: int = 256  # connections at once; past it the server stops accepting until some close
    check_every: float = 1.0  # seconds between the checks of the two timeouts above


class _Channel(HTTPChannel):
    """waitress's connection, remembering when the request it is reading began."""

    reading_since: float | None = None

    def received(self, data: bytes) -> bool:
        if self.request is None and data:
            self.reading_since = time.monotonic()
        done = super().received(data)
        if self.request is None:  # every request received so far is complete
            self.reading_since = None
        return done


class _Server(TcpWSGIServer):
    """waitress's TCP server, holding each client to `Limits`."""

    channel_class = _Channel
    limits = Limits()

    def handle_accept(self) -> None:
        try:
            accepted = self.accept()
        except OSError:
            return
        if accepted is None:
            return
        conn, addr = accepted
        host = addr[0] if isinstance(addr, tuple) else addr
        mine = sum(1 for ch in self.active_channels.values() if isinstance(ch.addr, tuple) and ch.addr[0] == host)
        if mine >= self.limits.per_client:
            conn.close()  # this client has its share; the others keep theirs
            return
        self.set_socket_options(conn)
        self.channel_class(self, conn, self.fix_addr(addr), self.adj, map=self._map)

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # idle connections (channel_timeout)
        cutoff = time.monotonic() - self.limits.request_seconds
        for channel in list(self.active_channels.values()):
            since = getattr(channel, "reading_since", None)
            if since is not None and since < cutoff:
                channel.will_close = True  # a request trickling in: a slow client holds no thread nor slot


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8780, threads: int = 4, limits: Limits = Limits()):
    """A waitress server for `root` (call `.run()`; port 0 picks a free one: `.effective_port`)."""
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident="mergepkg-registry",
        max_request_body_size=4 * MAX_BODY,  # past ours: a JSON 413 below that
        channel_timeout=int(max(1, limits.idle_seconds)),
        cleanup_interval=int(max(1, limits.check_every)),
        connection_limit=limits.total,
        expose_tracebacks=False,
    )
    dispatcher = ThreadedTaskDispatcher()
    dispatcher.set_thread_count(threads)
    server = _Server(App(root), {}, True, None, dispatcher=dispatcher, adj=adj, sockinfo=adj.listen[0])
    server.limits = limits
    return server

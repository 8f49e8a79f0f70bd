"""`mergepkg registry serve`: a registry folder over HTTP, with token-guarded writes.

A WSGI app served by waitress (a maintained, pure-Python production server):

- `GET|HEAD /<path>`: the static layout (index.py), with an ETag per file and 304 for
  a matching If-None-Match. Paths are checked part by part: nothing starting with `.`
  (so `..` and the private `.mergepkg/` folder are out), nothing outside the folder.
- `POST /api/v1/publish` `{"recipe": TOML text, "lock": TOML text or null}` and
  `POST /api/v1/yank` `{"name", "version", "yanked": bool}`: only with
  `Authorization: Bearer <token>` (401 without one, 403 for a wrong one); 413 above
  the size limit, 400 for malformed or invalid uploads, 409 for a published version
  with other content. Writes go through `RegistryFolder`, so they are atomic and two
  publishes at once both land.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
from pathlib import Path

import filelock

from mergepkg.errors import MergepkgError, PublishError
from mergepkg.recipe.plan import make_plan
from mergepkg.registry import tokens
from mergepkg.registry.folder import RegistryFolder, parse_published
from mergepkg.registry.index import MAX_RECIPE_BYTES

MAX_BODY = 2 * MAX_RECIPE_BYTES + 4096  # a recipe, its lock and the JSON around them
STATUS = {
    200: "OK",
    201: "Created",
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
        self.folder.config()  # refuse to serve a folder that is not a registry

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if path.startswith("/api/v1/"):
            if method != "POST":
                return _json(start_response, 405, {"error": "use POST"})
            status, body = self.write(path[len("/api/v1/") :], environ)
            return _json(start_response, status, body)
        if method not in ("GET", "HEAD"):
            return _json(start_response, 405, {"error": "the index is read-only; writes go to /api/v1/"})
        return self.read(path, environ, start_response, head=method == "HEAD")

    # -- reads ---------------------------------------------------------------------
    def read(self, path: str, environ, start_response, head: bool):
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
        etag = '"' + hashlib.sha256(data).hexdigest()[:32] + '"'
        wanted = environ.get("HTTP_IF_NONE_MATCH", "")
        if wanted.strip() == "*" or etag in [t.strip() for t in wanted.split(",")]:
            start_response("304 Not Modified", [("ETag", etag)])
            return [b""]
        kind = (
            "application/json"
            if file.suffix in (".json", ".jsonl")
            else "application/toml"
            if file.suffix == ".toml"
            else mimetypes.guess_type(file.name)[0] or "text/plain"
        )
        start_response(
            "200 OK",
            [("Content-Type", kind), ("Content-Length", str(len(data))), ("ETag", etag), ("Cache-Control", "no-cache")],
        )  # revalidate each time: cheap with ETag
        return [b"" if head else data]

    # -- writes --------------------------------------------------------------------
    def write(self, action: str, environ) -> tuple[int, dict]:
        if action not in ("publish", "yank"):
            return 404, {"error": f"no action {action!r}; expected publish or yank"}
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if not auth.startswith("Bearer ") or not auth[7:].strip():
            return 401, {
                "error": "a bearer token is required",
                "hint": "create one with `mergepkg registry token create`",
            }
        try:
            who = tokens.holder(self.folder.root, auth[7:].strip())
        except MergepkgError as e:
            return 500, {"error": f"the registry's token file cannot be read: {e.message}"}
        if who is None:
            return 403, {"error": "the token is not valid for this registry"}
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
            return self.publish(payload) if action == "publish" else self.yank(payload)
        except MergepkgError as e:  # first: some are ValueErrors too
            status = e.status if isinstance(e, PublishError) else 400
            return status, {"error": f"{e.where}: {e.message}" if e.where else e.message, "hint": e.hint}
        except (ValueError, UnicodeDecodeError, RecursionError) as e:
            return 400, {"error": f"malformed upload: {e}"}
        except filelock.Timeout:
            return 503, {"error": "the registry is busy with other writes; try again"}

    def publish(self, payload: dict) -> tuple[int, dict]:
        recipe_text, lock_text = payload.get("recipe"), payload.get("lock")
        if not isinstance(recipe_text, str) or not (lock_text is None or isinstance(lock_text, str)):
            raise ValueError('expected {"recipe": "<TOML text>", "lock": "<TOML text>" or null}')
        data = recipe_text.encode("utf-8")
        recipe = parse_published(data, "recipe.toml")
        make_plan(recipe)  # cycles and references, as the publisher's own check did
        self.folder.check_dependencies(recipe)
        entry, new = self.folder.publish(recipe, data, lock_text)
        return (201 if new else 200), {"entry": json.loads(entry.to_json()), "published": new}

    def yank(self, payload: dict) -> tuple[int, dict]:
        name, version, yanked = payload.get("name"), payload.get("version"), payload.get("yanked", True)
        if not isinstance(name, str) or not isinstance(version, str) or not isinstance(yanked, bool):
            raise ValueError('expected {"name": str, "version": str, "yanked": bool}')
        entry = self.folder.yank(name, version, yanked)
        return 200, {"entry": json.loads(entry.to_json())}


def _json(start_response, status: int, body: dict):
    data = (json.dumps({k: v for k, v in body.items() if v is not None}) + "\n").encode()
    start_response(
        f"{status} {STATUS.get(status, '')}", [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    )
    return [data]


def make_server(root: Path, host: str = "127.0.0.1", port: int = 8780, threads: int = 4):
    """A waitress server for `root` (call `.run()`; port 0 picks a free one: `.effective_port`)."""
    from waitress import create_server

    return create_server(
        App(root), host=host, port=port, threads=threads, ident="mergepkg-registry", max_request_body_size=4 * MAX_BODY
    )  # past ours: a JSON 413 below that

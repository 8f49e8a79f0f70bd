"""Reading registries: the configured list, their index files, recipe files, verified.

Registries are configured in `$MERGEPKG_HOME/registries.toml` (`mergepkg registry add`),
in the order they were added. A registry's URL is a folder (a path or `file://`), or
an `http(s)://` base URL. HTTP reads keep each file and its ETag in
`$MERGEPKG_HOME/registry-cache/`, ask again with If-None-Match (a 304 costs no body),
and fall back to the kept copy when the server cannot be reached or `--offline` is set.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from mergepkg.errors import MergepkgError, PublishError, RegistryError, did_you_mean, disk_error
from mergepkg.files import write_atomic
from mergepkg.recipe.names import NAME_HINT, canonical_name, is_name
from mergepkg.registry.index import (
    MAX_RECIPE_BYTES,
    Entry,
    index_path,
    published_lock_path,
    read_index,
    recipe_path,
)
from mergepkg.settings import Settings, home_not_a_folder, make_home, read_config, url_tables

TIMEOUT = 30  # seconds per request
# The most bytes read of a registry's file: a recipe file is refused at publishing past
# MAX_RECIPE_BYTES, and an index, packages.json or a lock of a real registry is far below
# this (an index line is a few hundred bytes; 64 MiB is some 100,000 versions or packages).
# Past it, the file is refused unread and unkept: a registry cannot fill memory or disk.
MAX_FILE_BYTES = 64 * 2**20
_KEPT_HEAD = 2**20  # a kept copy's first line (its ETag, as JSON) is at most this long


class ChecksumMismatch(RegistryError):
    """A fetched recipe file is not the one its index entry (or a lock) names."""


class Unreachable(RegistryError):
    """A registry could not be read and nothing was kept from an earlier read."""


class RegistryConfigError(MergepkgError, ValueError):
    """registries.toml cannot be read as the registry list. Not a RegistryError: no
    registry was asked anything, and a command that takes a RegistryError to mean "no
    such package" (`build NAME` falls back to a file) must not hide where the list is
    broken."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Requests that carry a token are never redirected: urllib would resend the token to
    wherever it points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # urllib then raises the 30x as an HTTPError


_WITH_TOKEN = urllib.request.build_opener(_NoRedirect)


@dataclass(frozen=True)
class Registry:
    name: str
    url: str  # http(s)://... or an absolute folder path
    token: str | None = None  # bearer token for publish and yank

    @property
    def folder(self) -> Path | None:
        if self.url.startswith("file://"):
            return Path(urllib.parse.urlparse(self.url).path)
        return None if self.url.startswith(("http://", "https://")) else Path(self.url)


def config_path(settings: Settings) -> Path:
    return settings.home / "registries.toml"


def configured(settings: Settings) -> list[Registry]:
    """The configured registries, in the order they were added; registries.toml is edited
    by hand too, so whatever it holds that is no registry list is an error located there."""
    hint = "fix or delete it, then `mergepkg registry add`"
    path, data = read_config(settings, "registries.toml", what="registry list", error=RegistryConfigError, hint=hint)
    tables = url_tables(data, "registries", path=path, error=RegistryConfigError, hint=hint, strings=("token",))
    return [Registry(n, r["url"], r.get("token")) for n, r in tables.items()]


def save(settings: Settings, registries: list[Registry]) -> None:
    doc = {"registries": {r.name: {k: v for k, v in (("url", r.url), ("token", r.token)) if v} for r in registries}}
    make_home(settings.home)  # one located error where it is a file or cannot be made
    write_atomic(config_path(settings), tomli_w.dumps(doc), mode=0o600)  # tokens may be in it


def add_registry(settings: Settings, name: str, url: str, token: str | None = None) -> Registry:
    """Configure registry `name` at `url` (checked, written in one spelling), searched
    after those configured before it."""
    if not is_name(name):
        raise RegistryError(f"invalid registry name {name!r}", hint=NAME_HINT)
    regs = configured(settings)
    if any(r.name == name for r in regs):
        raise RegistryError(
            f"a registry named {name!r} is already configured",
            file=str(config_path(settings)),
            hint="remove it first, or pick another name",
        )
    variable = token_variable(name)
    if clash := next((r.name for r in regs if token_variable(r.name) == variable), None):
        raise RegistryError(  # its token would go to both
            f"{name!r} and the configured {clash!r} would read one token variable, {variable}",
            hint="pick a name that differs from it in more than case and punctuation",
        )
    reg = Registry(name, normalize_url(url), token)
    save(settings, [*regs, reg])
    return reg


def normalize_url(url: str) -> str:
    if url.startswith(("http://", "https://")):
        return url.rstrip("/")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*)://", url)
    if scheme and scheme[1].lower() != "file":
        raise RegistryError(
            f"a registry is not reached over {scheme[1]}://: {url}",
            hint="give a folder, a file:// or an http(s):// URL",
        )
    folder = Path(urllib.parse.urlparse(url).path if url.startswith("file://") else url).expanduser().resolve()
    if not (folder / "config.json").is_file():
        raise RegistryError(
            f"not a registry folder (no config.json): {folder}",
            hint="create one with `mergepkg registry init DIR --name NAME`, or give an http(s) URL",
        )
    return str(folder)


class Client:
    """Reads configured registries; one instance per command (it remembers what it read)."""

    def __init__(self, settings: Settings, registries: list[Registry] | None = None):
        self.settings = settings
        if registries is not None:
            self.registries = registries  # else read on first use: a locked, installed graph reads no config
        self.cache = settings.home / "registry-cache"
        self._read: dict[tuple[str, str], bytes | None] = {}

    @functools.cached_property
    def registries(self) -> list[Registry]:
        return configured(self.settings)

    def registry(self, name: str) -> Registry:
        for r in self.registries:
            if r.name == name:
                return r
        raise RegistryError(
            f"no registry named {name!r}",
            hint=did_you_mean(name, [r.name for r in self.registries])
            or "add it with `mergepkg registry add NAME URL`",
        )

    def by_url(self, url: str) -> Registry:
        return next((r for r in self.registries if r.url == url), Registry(url, url))

    def ordered(self, name: str | None) -> list[Registry]:
        if name is not None:
            return [self.registry(name)]
        if not self.registries:
            raise RegistryError(
                "no registry is configured", hint="add one with `mergepkg registry add NAME URL_OR_PATH`"
            )
        return self.registries

    # -- files ---------------------------------------------------------------------
    def get(self, reg: Registry, path: str, *, immutable: bool = False, limit: int | None = None) -> bytes | None:
        """A file of a registry, or None when it has no such file; one over `limit` bytes
        (default MAX_FILE_BYTES) is an error, read no further than that."""
        if (reg.url, path) not in self._read:
            self._read[reg.url, path] = self._get(reg, path, immutable, MAX_FILE_BYTES if limit is None else limit)
        return self._read[reg.url, path]

    def _get(self, reg: Registry, path: str, immutable: bool, limit: int) -> bytes | None:
        if reg.folder is not None:
            try:
                with open(reg.folder / path, "rb") as f:  # a link to /dev/zero ends at the limit too
                    data = f.read(limit + 1)
            except FileNotFoundError:
                return None
            except OSError as e:
                raise RegistryError(f"cannot read {path}: {e}", file=str(reg.folder)) from None
            if len(data) > limit:
                raise too_big(reg, path, limit)
            return data
        kept_file = self.cache / hashlib.sha256(reg.url.encode()).hexdigest()[:16] / path
        try:
            kept = _Kept.read(kept_file, limit)  # (etag, body) of an earlier read; a 404 is kept as body None
        except OSError as e:
            raise _unkept(e, kept_file, self.cache, self.settings.home) from None
        if kept is not None and ((immutable and kept.body is not None) or self.settings.registry_offline):
            return kept.body  # recipe files never change (checked by sha256 anyway)
        if self.settings.registry_offline:
            raise Unreachable(
                f"{reg.name}: {path} was never fetched and --offline is set", file=reg.url, hint="run once online"
            )
        request = urllib.request.Request(f"{reg.url}/{path}", headers={"User-Agent": "mergepkg"})
        if kept is not None and kept.etag:
            request.add_header("If-None-Match", kept.etag)
        token = os.environ.get(token_variable(reg.name)) or reg.token
        if token:  # a private registry's reads need it; a redirect never gets it (`_WITH_TOKEN` follows none)
            request.add_header("Authorization", f"Bearer {token}")
        opener = _WITH_TOKEN if token else urllib.request.build_opener()
        try:
            with opener.open(request, timeout=TIMEOUT) as response:
                etag, announced = response.headers.get("ETag"), response.headers.get("Content-Length", "")
                over = announced.isdigit() and int(announced) > limit  # then not even read
                body = b"" if over else response.read(limit + 1)  # a stream with no end stops here
        except urllib.error.HTTPError as e:
            e.close()  # its connection; the code is all that is read
            if e.code == 304 and kept is not None:
                return kept.body
            if e.code in (404, 410):
                _Kept(None, None).write(kept_file)  # so offline, this registry is known not to have it
                return None
            if e.code < 500 or kept is None:
                raise Unreachable(f"{reg.name}: GET {path} answered {e.code} {e.reason}", file=reg.url) from None
            return kept.body  # a 5xx (a proxy before a stopped server): what was fetched before
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            if kept is not None:
                return kept.body  # offline: what was fetched before
            reason = getattr(e, "reason", e)
            raise Unreachable(
                f"{reg.name}: cannot reach the registry ({reason})",
                file=reg.url,
                hint="check the URL with `mergepkg registry list`; nothing was fetched from it before",
            ) from None
        if over or len(body) > limit:
            raise too_big(reg, path, limit)  # never kept
        _Kept(etag, body).write(kept_file)
        return body

    # -- what the commands ask -------------------------------------------------------
    def having(
        self, name: str, registry: str | None = None, unreachable: list[Unreachable] | None = None
    ) -> Iterator[tuple[Registry, list[Entry]]]:
        """Each registry (`registry`, or all in their added order) that has package `name`,
        with its versions, read only as the caller goes on. A registry that cannot be
        reached is skipped, its error appended to `unreachable`; a malformed index is an
        error, never skipped (a registry that has the package but says it wrong)."""
        name = canonical_name(name)
        for reg in self.ordered(registry):
            try:
                data = self.get(reg, index_path(name))
            except Unreachable as e:
                if unreachable is not None:
                    unreachable.append(e)
                continue
            if data is not None:
                yield reg, read_index(data.decode("utf-8"), f"{reg.url}/{index_path(name)}")

    def entries(self, name: str, registry: str | None = None) -> tuple[Registry, list[Entry]]:
        """The versions of a package in the first registry (of `registry`, or all in order) that has it."""
        name = canonical_name(name)
        unreachable: list[Unreachable] = []
        for found in self.having(name, registry, unreachable):  # the first; say so if none has it
            return found
        if unreachable and len(unreachable) == len(self.ordered(registry)):
            raise unreachable[0]
        where = registry or ", ".join(r.name for r in self.registries)
        raise RegistryError(
            f"no package named {name!r} in {where}",
            hint="; ".join(e.message for e in unreachable) or "`mergepkg search TEXT` lists packages",
        )

    def packages(self, reg: Registry) -> dict[str, dict]:
        data = self.get(reg, "packages.json")
        if data is None:
            raise RegistryError(f"{reg.name} has no packages.json; is it a mergepkg registry?", file=reg.url)
        try:
            return json.loads(data).get("packages", {})
        except (ValueError, AttributeError, RecursionError) as e:
            raise RegistryError(f"{reg.name}: packages.json is not valid: {e}", file=reg.url) from None

    def recipe_bytes(self, reg: Registry, name: str, version: str, sha256: str) -> bytes:
        """A published recipe file, verified against the index's (or the lock's) sha256."""
        path = recipe_path(name, version)
        data = self.get(reg, path, immutable=True, limit=MAX_RECIPE_BYTES)  # what publishing allows
        if data is None:
            raise RegistryError(f"{reg.name} lists {name}@{version} but has no {path}", file=reg.url)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ChecksumMismatch(
                f"{name}@{version} from {reg.name} does not match its checksum "
                f"(sha256 {hashlib.sha256(data).hexdigest()[:16]}..., expected {sha256[:16]}...)",
                file=f"{reg.url}/{path}",
                hint="the file was changed after publishing; do not use it",
            )
        return data

    def lock_bytes(self, reg: Registry, entry: Entry) -> bytes:
        """A published version's lock (`entry.lock` set), verified against the entry's sha256."""
        path = published_lock_path(entry.name, entry.version)
        data = self.get(reg, path, immutable=True)
        if data is None:
            raise RegistryError(
                f"{reg.name} lists a lock for {entry.name}@{entry.version} but has no {path}", file=reg.url
            )
        if hashlib.sha256(data).hexdigest() != entry.lock:
            raise ChecksumMismatch(
                f"the lock of {entry.name}@{entry.version} from {reg.name} does not match its checksum",
                file=f"{reg.url}/{path}",
                hint="the file was changed after publishing; do not use it",
            )
        return data

    # -- writes over HTTP --------------------------------------------------------------
    def post(self, reg: Registry, action: str, payload: dict) -> dict:
        token = os.environ.get(token_variable(reg.name)) or reg.token
        headers = {"Content-Type": "application/json", "User-Agent": "mergepkg"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(
            f"{reg.url}/api/v1/{action}", data=json.dumps(payload).encode(), headers=headers, method="POST"
        )
        try:
            with _WITH_TOKEN.open(request, timeout=TIMEOUT) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            with e:  # closes its connection
                try:
                    body = json.loads(e.read())
                except (ValueError, RecursionError):
                    body = {"error": f"{e.code} {e.reason}"}
            hint = body.get("hint")
            if e.code in (401, 403):  # what the publisher can do here, not what the server's host does
                hint = (
                    f"give {reg.name}'s token: `mergepkg registry add {reg.name} URL --token TOKEN` "
                    f"or {token_variable(reg.name)}"
                )
            if 300 <= e.code < 400:
                body["error"] = f"redirected to {e.headers.get('Location')}; writes are not followed there"
                hint = "add the registry under its final URL"
            raise PublishError(
                f"{reg.name} refused: {body.get('error')}", status=e.code, file=reg.url, hint=hint
            ) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            raise RegistryError(
                f"{reg.name}: no answer from the registry ({getattr(e, 'reason', e)})", file=reg.url
            ) from None


def too_big(reg: Registry, path: str, limit: int) -> RegistryError:
    """A file past the most mergepkg reads of it (MAX_RECIPE_BYTES, MAX_FILE_BYTES)."""
    return RegistryError(
        f"{reg.name} has more than {limit:,} bytes in this file, more than a registry's file may hold; "
        "it was not read further",
        file=f"{reg.url}/{path}",
        hint="the registry serves something that is no registry file: tell its maintainer",
    )


def token_variable(registry: str) -> str:
    """The environment variable that holds a registry's token: MERGEPKG_TOKEN_<NAME>
    (upper case, other characters as `_`), so a token never goes to another registry."""
    return "MERGEPKG_TOKEN_" + "".join(c if c.isalnum() else "_" for c in registry.upper())


@dataclass(frozen=True)
class _Kept:
    """A file as a registry served it, with its ETag, in one cache file written by rename
    (so a body and an ETag of different reads never meet). body None: the registry said 404."""

    etag: str | None
    body: bytes | None

    @classmethod
    def read(cls, path: Path, limit: int) -> _Kept | None:
        """The copy kept at `path`; None where there is none, or not one of ours (a body over
        `limit`, kept before there was one, is read again: so refused). Any other OSError is
        raised: the caller says it (`_unkept`)."""
        try:
            with open(path, "rb") as f:
                data = f.read(_KEPT_HEAD + limit + 1)
        except FileNotFoundError:
            return None
        head, _, body = data.partition(b"\n")
        if len(data) > _KEPT_HEAD + limit or len(body) > limit:
            return None
        try:
            meta = json.loads(head)
            return cls(meta.get("etag"), body if meta.get("found") else None)
        except (ValueError, AttributeError, RecursionError):
            return None  # not one of ours: read it again

    def write(self, path: Path) -> None:
        head = json.dumps({"etag": self.etag, "found": self.body is not None}).encode()
        write_atomic(path, head + b"\n" + (self.body or b""))


def _unkept(e: OSError, path: Path, cache: Path, home: Path) -> MergepkgError:
    """A kept copy that cannot be read: a file where registry-cache/ (or the home) should
    be a folder, a folder where a kept file should be. The home's own error where the home
    is the file; else one located at the kept file (what a disk refuses is the machine's,
    as everywhere)."""
    if (disk := disk_error(e, "reading a kept copy")) is not None:
        return disk
    if home.exists() and not home.is_dir():
        return home_not_a_folder(home)
    return RegistryError(
        f"cannot use the kept copy of a registry's file: {e.strerror or e}",
        file=str(path),
        hint=f"delete {cache}: it only holds copies of files registries served",
    )

"""The registry's web pages, served (`WebPages`, behind `registry serve`) or written as a
static site (`write_site`, `registry site`). `pages.py` renders them.

Routes (every page's URL ends with `/`; without it the server redirects):

- `/`: every package; `/?q=TEXT`: those whose name, description or tags hold every word.
- `/packages/NAME/` (and `/packages/TEAM/NAME/`): the package at its latest version.
- `/packages/NAME/VERSION/`: one version (yanked ones too).

Rendered pages are kept per (catalog, path, query) until the folder changes, without the
client's Host (filled in as each page is sent: `pages.fill_url`), and up to `KEEP` pages
and `KEEP_BYTES` bytes: no request can grow the server's memory past that.
"""

from __future__ import annotations

import shutil
import threading
from html import escape
from pathlib import Path
from urllib.parse import parse_qs

from mergepkg.errors import RegistryError
from mergepkg.files import write_atomic
from mergepkg.registry.catalog import Catalog, CatalogCache, Package, read_catalog
from mergepkg.registry.folder import RegistryFolder, packages_json
from mergepkg.registry.pages import Links, fill_url, index_page, not_found_page, package_page

KEEP = 4096  # rendered pages kept in memory; past it the cache starts over
KEEP_BYTES = 64 * 2**20  # and their bytes: a page bigger than this is rendered each time


def package_route(catalog: Catalog, rest: str) -> tuple[Package | None, str | None]:
    """`NAME`, `TEAM/NAME`, `NAME/VERSION` or `TEAM/NAME/VERSION` to (package, version).
    Names hold no `.` and versions always do, so the last part tells which it is."""
    parts = rest.strip("/").split("/")
    version = parts.pop() if len(parts) > 1 and "." in parts[-1] else None
    pkg = catalog.find("/".join(parts)) if 1 <= len(parts) <= 2 else None
    if pkg is None or (version is not None and pkg.entry(version) is None):
        return None, None
    return pkg, version


class WebPages:
    """The pages of one registry folder, for the WSGI app (`server.py`)."""

    def __init__(self, root: Path):
        self.root = root
        self.catalogs = CatalogCache(root)
        self._kept: dict[tuple, tuple[int, bytes, str]] = {}
        self._kept_bytes = 0
        self._lock = threading.Lock()

    @staticmethod
    def handles(path: str) -> bool:
        return path == "/" or path == "/packages" or path.startswith("/packages/")

    def respond(self, path: str, query_string: str, url: str) -> tuple[int, bytes, str]:
        """(status, HTML, Location for a redirect else "") of a page route; `url` is the
        server's base URL as the client asked for it (for `registry add`). A path with a
        control character names no page (and would break a redirect's header): 404."""
        catalog = self.catalogs.get()
        if any(ord(c) < 32 or ord(c) == 127 for c in path):
            return 404, not_found_page(catalog, Links.climbing(path), "No such package or version here.").encode(), ""
        if path != "/" and not path.endswith("/"):
            return 301, b"", path + "/"
        query = (parse_qs(query_string).get("q") or [""])[0].strip() if path == "/" else ""
        key = (catalog.stamp, path, query)
        kept = self._kept.get(key)
        if kept is None:
            kept = self._render(catalog, path, query)
            self._keep(key, kept)
        status, data, location = kept
        return status, fill_url(data, url), location

    def _keep(self, key: tuple, page: tuple[int, bytes, str]) -> None:
        size = len(page[1])
        if size > KEEP_BYTES:
            return
        with self._lock:
            if len(self._kept) >= KEEP or self._kept_bytes + size > KEEP_BYTES:
                self._kept.clear()
                self._kept_bytes = 0
            if key not in self._kept:
                self._kept[key] = page
                self._kept_bytes += size

    def _render(self, catalog: Catalog, path: str, query: str) -> tuple[int, bytes, str]:
        links = Links.climbing(path)
        if path == "/":
            return 200, index_page(catalog, links, query or None).encode(), ""
        pkg, version = package_route(catalog, path[len("/packages/") :]) if path != "/packages/" else (None, None)
        if pkg is None:
            return 404, not_found_page(catalog, links, "No such package or version here.").encode(), ""
        return 200, package_page(catalog, self.root, pkg, links, version).encode(), ""


def write_site(root: Path, out: Path, url: str = "") -> int:
    """The pages of registry folder `root` as files under `out`, beside a copy of the
    registry's own files (so `out` is a registry too, for `registry add`); the number of
    pages written. `url`: where `out` will be served, for the pages' `registry add` line."""
    root, out = Path(root).resolve(), Path(out).resolve()
    if out == root or out.is_relative_to(root) or root.is_relative_to(out):
        raise RegistryError("the site's folder must be outside the registry folder", file=str(out))
    catalog = read_catalog(root)  # refuses a folder that is not a registry, as `registry serve` does
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "config.json", out / "config.json")
    write_atomic(out / "packages.json", packages_json(RegistryFolder(root).packages()))  # OUT is a registry too
    for name in ("index", "recipes"):
        if (root / name).is_dir():
            shutil.copytree(root / name, out / name, dirs_exist_ok=True, ignore=shutil.ignore_patterns(".*"))

    def page(path: str, html: str) -> None:
        write_atomic(out / path / "index.html", fill_url(html.encode(), url or "URL"))  # as served, Host or not

    page("", index_page(catalog, Links.climbing("", "index.html")))
    count = 1
    for pkg in catalog.packages.values():
        where = f"packages/{pkg.name}/"
        page(where, package_page(catalog, root, pkg, Links.climbing(where, "index.html"), None))
        for e in pkg.entries:
            page(
                where + e.version,
                package_page(catalog, root, pkg, Links.climbing(where + e.version + "/", "index.html"), e.version),
            )
        count += 1 + len(pkg.entries)
    write_atomic(out / "404.html", not_found_page(catalog, _anywhere(url), "No such page here.").encode())
    return count


def _anywhere(url: str) -> Links:
    """The links of `404.html`, which a static host shows at any missing path: from the
    site's URL when it is known, else relative to the site's root as `index.html`'s are
    (right at the root, and for the file opened from its folder)."""
    if url:
        return Links(escape(url.rstrip("/") + "/"), "index.html")
    return Links.climbing("", "index.html")

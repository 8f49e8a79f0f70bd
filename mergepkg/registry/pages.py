"""The registry's web pages as HTML text: the index (with search) and a page per package.

Server-rendered, no JavaScript needed: `registry serve` answers them (`site.py`) and
`registry site` writes them as files. Every piece of registry data goes through
`html.escape`. Links are relative (`Links`), so the same pages work at a server's root,
under any path of a static host, and from `file://`.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import quote

from mergepkg.errors import MergepkgError
from mergepkg.lockfile import parse_lock
from mergepkg.recipe.parse import parse_recipe
from mergepkg.recipe.plan import make_plan
from mergepkg.recipe.versions import Version
from mergepkg.registry.catalog import Catalog, Package
from mergepkg.registry.drawing import dag_svg
from mergepkg.registry.index import Entry, published_lock_path, recipe_path

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;margin:0;color:#1d232a;background:#fafbfc}
header{background:#23314a;color:#fff;padding:.6em 1.2em;display:flex;gap:1em;align-items:center;flex-wrap:wrap}
header a{color:#fff;font-weight:600;text-decoration:none}header form{margin-left:auto}
input[type=search]{padding:.3em .5em;width:16em;border-radius:4px;border:1px solid #ccd}
main{max-width:72em;margin:0 auto;padding:1em 1.2em}h1{margin:.2em 0 .1em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.3em .6em;
border-bottom:1px solid #e3e6ea;vertical-align:top}th{background:#f0f2f5}
code,pre{font:13px/1.45 ui-monospace,monospace}pre{background:#fff;border:1px solid #e3e6ea;padding:.7em;
overflow:auto}.tag{background:#e6eefb;color:#23314a;border-radius:3px;padding:0 .4em;margin-right:.3em;
font-size:.85em;white-space:nowrap;text-decoration:none;display:inline-block;margin-bottom:2px}
.yanked{background:#fde8e8;color:#9b1c1c;border-radius:3px;padding:0 .4em;font-size:.85em}
.muted{color:#667}.dagbox{overflow:auto;background:#fff;border:1px solid #e3e6ea;padding:.5em}
.dag text{font:12px ui-monospace,monospace;text-anchor:middle;fill:#1d232a}.dag .sub{fill:#556;font-size:11px}
.dag rect{fill:#fff;stroke:#4a6fa5;stroke-width:1.4}.dag .source rect{fill:#eef5ee;stroke:#4f8a4f}
.dag .output rect{fill:#e6eefb;stroke:#23314a;stroke-width:2}.hash{word-break:break-all}
#packages td:first-child{white-space:nowrap}
"""
URL_SLOT = "<!--registry-url-->"  # where a page's `registry add` URL goes (`fill_url`)
FILTER_JS = (
    "document.getElementById('filter').hidden=false;document.getElementById('filter').oninput=function(e){"
    "var w=e.target.value.toLowerCase().split(/\\s+/).filter(Boolean),n=0;"
    "document.querySelectorAll('#packages tbody tr').forEach(function(r){"
    "var ok=w.every(function(x){return r.dataset.search.indexOf(x)>=0});r.hidden=!ok;n+=ok});"
    "document.getElementById('count').textContent=n+' packages'}"
)


@dataclass(frozen=True)
class Links:
    """Relative links from one page: `root` climbs to the site's root; `suffix` is what a
    folder link ends with (`""` for a server, `"index.html"` for files opened directly)."""

    root: str = "./"
    suffix: str = ""

    def package(self, name: str, version: str | None = None) -> str:
        return f"{self.root}packages/{escape(name)}/" + (f"{escape(version)}/" if version else "") + self.suffix

    @property
    def static(self) -> bool:
        """Pages written as files (`registry site`): no server answers `?q=`."""
        return bool(self.suffix)

    def home(self) -> str:
        return self.root + self.suffix

    def file(self, path: str) -> str:
        return self.root + escape(path)

    @staticmethod
    def climbing(path: str, suffix: str = "") -> Links:
        """The links of the page at `path` (a folder: `packages/NAME/`)."""
        return Links("../" * path.strip("/").count("/") + ("../" if path.strip("/") else "") or "./", suffix)


def layout(catalog: Catalog, title: str, body: str, links: Links, query: str = "") -> str:
    form = (
        f'<form action="{links.home()}" method="get" role="search"><input type="search" name="q" '
        f'value="{escape(query)}" placeholder="search packages" aria-label="search packages"></form>'
        if not links.static
        else ""
    )
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width,initial-scale=1"><title>{escape(title)}</title><style>{STYLE}</style></head>'
        f'<body><header><a href="{links.home()}">{escape(catalog.registry or "registry")}</a>'
        f'<span class="muted">mergepkg registry</span>{form}</header><main>{body}</main></body></html>'
    )


def _tags(tags, links: Links) -> str:
    if not links.static:
        return "".join(f'<a class="tag" href="{links.home()}?q={escape(quote(t))}">{escape(t)}</a>' for t in tags)
    return "".join(f'<span class="tag">{escape(t)}</span>' for t in tags)


def index_page(catalog: Catalog, links: Links, query: str | None = None) -> str:
    """Every package (or those `query` finds), with its latest version, description and tags.
    A static page lists every package and filters them in the browser when JavaScript runs."""
    static = links.static
    found = catalog.search(query) if query else list(catalog.packages.values())
    rows = []
    for p in found:
        e = p.latest
        rows.append(
            f'<tr data-search="{escape(p.haystack)}"><td><a href="{links.package(p.name)}">{escape(p.name)}</a></td>'
            f"<td>{escape(e.version)}{' <span class=yanked>yanked</span>' if p.yanked else ''}</td>"
            f"<td>{escape(e.description)}</td><td>{_tags(e.tags, links)}</td></tr>"
        )
    heading = f"Packages matching “{escape(query)}”" if query else "Packages"
    filter_box = '<p><input type="search" id="filter" hidden placeholder="filter packages"></p>' if static else ""
    body = (
        f"<h1>{heading}</h1>{filter_box}<p class=muted id=count>{len(found)} packages</p>"
        '<table id="packages"><thead><tr><th>name</th><th>latest</th><th>description</th><th>tags</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
        + ("" if found else "<p>Nothing matches; every word must appear in a name, description or tag.</p>")
        + (f"<script>{FILTER_JS}</script>" if static else "")
    )
    return layout(catalog, f"{catalog.registry} packages", body, links, query or "")


def not_found_page(catalog: Catalog, links: Links, what: str) -> str:
    body = f'<h1>Not found</h1><p>{escape(what)}</p><p><a href="{links.home()}">every package</a></p>'
    return layout(catalog, "not found", body, links)


def _read(root: Path, path: str) -> str | None:
    try:
        return (root / path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _graph(text: str, entry: Entry) -> str:
    try:
        plan = make_plan(parse_recipe(text, Path(recipe_path(entry.name, entry.version))))
    except MergepkgError as e:
        return f"<p class=muted>the recipe cannot be drawn: {escape(e.message)}</p>"
    return f'<div class="dagbox">{dag_svg(plan)}</div>'


def _caret(version: str) -> str:
    """The caret range a dependent would write: `^1.2`, `^0.3`, `^0.0.4`; for a pre-release
    the range names it (`^1.0.0-rc.1`), as only such a range picks a pre-release."""
    v = Version.parse(version)
    if v.pre:
        return f"^{version}"
    return f"^{v.major}.{v.minor}" if (v.major, v.minor) != (0, 0) else f"^0.0.{v.patch}"


def _remote_link(remote: str) -> str:
    """An `hf://datasets/ORG/NAME[/PREFIX]` remote links to the Hub; others are shown."""
    if remote.startswith("hf://"):
        parts = remote[5:].strip("/").split("/")
        page = "/".join(parts[:3]) + ("/tree/main/" + "/".join(parts[3:]) if parts[3:] else "")
        return f'<a href="https://huggingface.co/{escape(quote(page))}">{escape(remote)}</a>'
    return f"<code>{escape(remote)}</code>"


def _built(root: Path, entry: Entry) -> str:
    """What the publisher's lock pins of the built steps, and where the remote keeps them."""
    if not entry.lock:
        return "<p class=muted>No lock was published with this version: its steps are built from source.</p>"
    text = _read(root, published_lock_path(entry.name, entry.version))
    try:
        lock = parse_lock(text or "", published_lock_path(entry.name, entry.version))
    except MergepkgError as e:
        return f"<p class=muted>the published lock cannot be read: {escape(e.message)}</p>"
    where = (
        f"<p>Built steps are on the remote {_remote_link(entry.remote)}: each under "
        "<code>artifacts/&lt;key&gt;/</code>, a Hugging Face model folder with its model card; "
        "<code>mergepkg build</code> pulls those whose digest matches instead of merging.</p>"
        if entry.remote
        else "<p class=muted>This package names no remote: a build merges each step itself.</p>"
    )
    rows = "".join(
        f"<tr><td>{escape(s.name)}</td><td>{escape(s.method)}</td><td class=hash><code>{escape(s.key)}</code></td>"
        f"<td class=hash>{f'<code>{escape(s.digest)}</code>' if s.digest else '<span class=muted>not built</span>'}"
        + (
            f"<br><code class=muted>{escape(entry.remote.rstrip('/'))}/artifacts/{escape(s.key)}/</code>"
            if entry.remote and s.digest
            else ""
        )
        + "</td></tr>"
        for s in lock.steps.values()
    )
    return where + f"<table><tr><th>step</th><th>method</th><th>key</th><th>digest</th></tr>{rows}</table>"


def _use(catalog: Catalog, pkg: Package, entry: Entry, links: Links) -> str:
    """The commands that use this version; for a yanked one, none of them: install, build
    and dependency ranges never pick a yanked version, only a lock that already names it."""
    if entry.yanked:
        instead = (
            "Every version of this package is yanked."
            if pkg.yanked
            else f'Use the latest, <a href="{links.package(pkg.name)}">{escape(pkg.latest.version)}</a>, instead.'
        )
        return (
            "<p><span class=yanked>yanked</span> This version is yanked: <code>install</code>, <code>build</code> "
            "and <code>[dependencies]</code> ranges never pick it; it stays usable only from a lock that already "
            f"names it. {instead}</p>"
        )
    name, v, caret = escape(entry.name), escape(entry.version), escape(_caret(entry.version))
    key = escape(f'"{entry.name}"' if "/" in entry.name else entry.name)
    return (
        f"<pre>mergepkg registry add {escape(catalog.registry or 'NAME')} {URL_SLOT}\n"
        f"mergepkg build {name}@={v}\nmergepkg install {name}@{caret}</pre>"
        f"<p>or depend on it from a recipe:</p><pre>[dependencies]\n{key} = &quot;{caret}&quot;</pre>"
    )


def fill_url(page: bytes, url: str) -> bytes:
    """A page with the registry's URL in its `registry add` line (`URL_SLOT`): the URL a
    client asked a server by, or the one a static site is given. Every piece of data on a
    page is escaped, so only the page itself holds `URL_SLOT`; a server keeps one rendering
    for every Host a client may send."""
    return page.replace(URL_SLOT.encode(), escape(url).encode(), 1)


def package_page(catalog: Catalog, root: Path, pkg: Package, links: Links, version: str | None) -> str:
    """One package at `version` (default: its latest): what it is, how to use it, its steps,
    versions, dependencies and dependents, pins, built steps, checksums and recipe. The
    `registry add` line holds `URL_SLOT`, for `fill_url`."""
    entry = pkg.entry(version) if version else pkg.latest
    assert entry is not None
    text = _read(root, recipe_path(entry.name, entry.version)) or ""
    name, v = escape(entry.name), escape(entry.version)
    use = _use(catalog, pkg, entry, links)
    versions = "".join(
        f'<tr><td><a href="{links.package(pkg.name, e.version)}">{escape(e.version)}</a>'
        f"{' <span class=yanked>yanked</span>' if e.yanked else ''}</td><td>{escape(e.published)}</td>"
        f"<td class=hash><code>{escape(e.sha256)}</code></td></tr>"
        for e in pkg.newest_first()
    )
    deps = "".join(
        f"<li>{_pkg_link(catalog, links, d.name)} <code>{escape(d.range)}</code>"
        + (f" <span class=muted>from {escape(d.registry)}</span>" if d.registry else "")
        + "</li>"
        for d in entry.dependencies
    )
    dependents = "".join(
        f"<li>{_pkg_link(catalog, links, d.name)} <code>{escape(', '.join(d.ranges))}</code> "
        f"<span class=muted>(versions {escape(', '.join(d.versions))})</span></li>"
        for d in catalog.dependents.get(pkg.name, ())
    )
    sources = "".join(
        f'<tr><td>{escape(n)}</td><td><a href="https://huggingface.co/{escape(pin.partition("@")[0])}">'
        f"{escape(pin.partition('@')[0])}</a></td><td class=hash><code>{escape(pin.partition('@')[2])}</code></td></tr>"
        for n, pin in entry.sources.items()
    )
    files = [("recipe", recipe_path(entry.name, entry.version), entry.sha256)]
    if entry.lock:
        files.append(("lock", published_lock_path(entry.name, entry.version), entry.lock))
    checksums = "".join(
        f'<tr><td>{what} <a href="{links.file(path)}">file</a></td><td class=hash><code>{escape(sha)}</code></td></tr>'
        for what, path, sha in files
    )
    body = (
        f"<h1>{name} <span class=muted>{v}</span>{' <span class=yanked>yanked</span>' if entry.yanked else ''}</h1>"
        f"<p>{escape(entry.description)}</p><p>{_tags(entry.tags, links)}</p>"
        + (
            f'<p class=muted>published {escape(entry.published)}; the latest is <a href="{links.package(pkg.name)}">'
            f"{escape(pkg.latest.version)}</a></p>"
            if entry is not pkg.latest
            else f"<p class=muted>published {escape(entry.published)}</p>"
        )
        + f"<h2 id=use>Use it</h2>{use}<h2 id=steps>Steps</h2>{_graph(text, entry) if text else ''}"
        "<h2 id=versions>Versions</h2><table><tr><th>version</th><th>published</th><th>sha256</th></tr>"
        f"{versions}</table>"
        f"<h2 id=dependencies>Dependencies</h2>{f'<ul>{deps}</ul>' if deps else '<p class=muted>none</p>'}"
        f"<h2 id=dependents>Dependents</h2>{f'<ul>{dependents}</ul>' if dependents else '<p class=muted>none here</p>'}"
        f"<h2 id=sources>Sources</h2>"
        + (
            f"<table><tr><th>source</th><th>model</th><th>pinned at</th></tr>{sources}</table>"
            if sources
            else "<p class=muted>none from the Hub</p>"
        )
        + f"<h2 id=built>Built steps</h2>{_built(root, entry)}"
        f"<h2 id=checksums>Checksums (sha256)</h2><table>{checksums}</table>"
        f"<h2 id=recipe>Recipe</h2><pre>{escape(text)}</pre>"
    )
    return layout(catalog, f"{entry.name} {entry.version}", body, links)


def _pkg_link(catalog: Catalog, links: Links, name: str) -> str:
    if name in catalog.packages:
        return f'<a href="{links.package(name)}">{escape(name)}</a>'
    return escape(name)

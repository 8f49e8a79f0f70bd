"""Benchmark: the registry's web pages (mergepkg/registry/pages.py, site.py).

    python bench/pages.py                 # 1,000 generated packages
    python bench/pages.py --packages 200 --seconds 2

Generates a registry folder of N packages (1 to 4 versions each, some yanked; 1 to 4
steps; dependencies on earlier packages; tags from a small vocabulary), then reports
pages per second through the WSGI app in-process for: the index (every package) and a
search rendered each time and kept, package pages rendered for the first time (each page once: no kept page) and
the same pages again (kept, until the folder changes), and one figure over HTTP
through waitress (`registry serve` on 127.0.0.1, one client, keep-alive). Then the time
`registry site` takes to write every page. A script that prints figures, not a test.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from mergepkg.registry.folder import RegistryFolder, make_entry, parse_published
from mergepkg.registry.index import index_path, recipe_path, summary, write_index
from mergepkg.registry.pages import Links, index_page
from mergepkg.registry.server import App, make_server
from mergepkg.registry.site import write_site

TAGS = ["mistral", "llama", "7b", "8b", "chat", "math", "code", "ties", "slerp", "dare", "moe", "tiny"]
METHODS = ["linear", "task_arithmetic", "ties", "dare_ties"]


def recipe(i: int, version: str, rng: random.Random, names: list[str]) -> str:
    deps = rng.sample(names, k=min(len(names), rng.choice([0, 0, 1, 2])))
    lines = [
        "[package]",
        f'name = "pkg-{i:04d}"',
        f'version = "{version}"',
        f'description = "Generated merge {i} of {rng.choice(TAGS)} models, {rng.randint(2, 9)} inputs"',
        f"tags = {json.dumps(rng.sample(TAGS, 3))}",
        "",
        "[dependencies]",
        *(f'{d} = "^0.1"' for d in deps),
        "",
        "[sources]",
        'base = { hf = "org/base-7b" }',
        *(f'ft{k} = {{ hf = "org/ft-{i}-{k}" }}' for k in range(3)),
        *(f'dep{k} = {{ dependency = "{d}", step = "s0" }}' for k, d in enumerate(deps)),
    ]
    models = ["ft0", "ft1", "ft2", *(f"dep{k}" for k in range(len(deps)))]
    for s in range(rng.randint(1, 4)):
        method = rng.choice(METHODS)
        inputs = rng.sample(models, 2) if s == 0 else [f"s{s - 1}", rng.choice(models)]
        refs = ", ".join(f'{{ model = "{m}", weight = 0.5 }}' for m in inputs)
        lines += ["", f"[steps.s{s}]", f'method = "{method}"'] + ([] if method == "linear" else ['base = "base"'])
        lines += [f"inputs = [{refs}]"] + (["params = { density = 0.5 }"] if "ties" in method else [])
    return "\n".join(lines) + "\n"


def generate(root: Path, count: int, seed: int = 0) -> int:
    """A registry of `count` packages written directly (publishing one by one is the slow part)."""
    rng = random.Random(seed)
    RegistryFolder(root).init("bench")
    packages, names, versions = {}, [], 0
    for i in range(count):
        entries = []
        for minor in range(1, rng.randint(1, 4) + 1):
            text = recipe(i, f"0.{minor}.0", rng, names)
            data = text.encode()
            entry = make_entry(parse_published(data, "gen.toml"), data)
            if rng.random() < 0.1:
                entry = entry.__class__(**{**entry.__dict__, "yanked": True})
            (root / recipe_path(entry.name, entry.version)).parent.mkdir(parents=True, exist_ok=True)
            (root / recipe_path(entry.name, entry.version)).write_bytes(data)
            entries.append(entry)
        (root / index_path(entries[0].name)).parent.mkdir(parents=True, exist_ok=True)
        (root / index_path(entries[0].name)).write_text(write_index(entries))
        packages[entries[0].name] = summary(entries)
        names.append(entries[0].name)
        versions += len(entries)
    (root / "packages.json").write_text(json.dumps({"packages": packages}, indent=1))
    return versions


def rate(app: App, paths: list[tuple[str, str]], seconds: float, once: bool = False) -> float:
    def call(path: str, query: str) -> None:
        env = {"REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query, "HTTP_HOST": "bench:1"}
        b"".join(app(env, lambda status, headers: None))

    done, start = 0, time.perf_counter()
    while (time.perf_counter() - start < seconds or not done) and (not once or done < len(paths)):
        call(*paths[done % len(paths)])
        done += 1
    return done / (time.perf_counter() - start)


def rendered(render, seconds: float) -> float:
    """Pages per second of `render` called directly: no kept page."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or not done:
        render()
        done += 1
    return done / (time.perf_counter() - start)


def over_http(root: Path, paths: list[str], seconds: float) -> float:
    server = make_server(root, "127.0.0.1", 0, threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    conn = http.client.HTTPConnection("127.0.0.1", server.effective_port)
    done, start = 0, time.perf_counter()
    try:
        while time.perf_counter() - start < seconds:
            conn.request("GET", paths[done % len(paths)])
            response = conn.getresponse()
            response.read()
            assert response.status == 200, response.status
            done += 1
    finally:
        conn.close()
        server.close()
    return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--packages", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0, help="per figure")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "reg"
        t = time.perf_counter()
        versions = generate(root, args.packages)
        print(f"generated {args.packages} packages, {versions} versions in {time.perf_counter() - t:.1f} s")
        app = App(root)
        t = time.perf_counter()
        app.pages.catalogs.get()
        print(f"catalog read (every index file, dependents): {(time.perf_counter() - t) * 1000:.0f} ms")
        names = sorted(app.pages.catalogs.get().packages)
        pkg_paths = [(f"/packages/{n}/", "") for n in names]
        catalog = app.pages.catalogs.get()
        figures = {
            "index (every package), rendered": rendered(lambda: index_page(catalog, Links()), args.seconds),
            "search ?q=chat+math, rendered": rendered(lambda: index_page(catalog, Links(), "chat math"), args.seconds),
            "index, kept": rate(app, [("/", "")], args.seconds),
            "search, kept": rate(app, [("/", "q=chat+math")], args.seconds),
            "package pages, first render": rate(app, pkg_paths, args.seconds, once=True),
            "package pages, kept": rate(app, pkg_paths, args.seconds),
            "package pages over HTTP (waitress)": over_http(root, [p for p, _ in pkg_paths], args.seconds),
        }
        for what, per_second in figures.items():
            print(f"{what:40s} {per_second:8.0f} pages/s  ({1000 / per_second:6.2f} ms/page)")
        t = time.perf_counter()
        count = write_site(root, Path(tmp) / "site")
        took = time.perf_counter() - t
        print(f"registry site: {count} pages in {took:.1f} s ({count / took:.0f} pages/s)")


if __name__ == "__main__":
    main()

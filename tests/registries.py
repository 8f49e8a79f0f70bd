"""Registries for tests: a hand-laid Hugging Face cache with the tiny models, published
recipes over it, and a real registry server on 127.0.0.1."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path

from hfcache import add_to_cache

from mergepkg.registry.folder import RegistryFolder


def lay_out_hub(cache: Path, models: dict[str, Path]) -> dict[str, str]:
    """tiny/base, tiny/ft1, tiny/ft2, tiny/ft3 in a Hugging Face cache; their commits."""
    return {n: add_to_cache(cache, f"tiny/{n}", models[n]) for n in ("base", "ft1", "ft2", "ft3")}


def skills(version: str = "0.1.0", weight: float = 0.5, deps: str = "", name: str = "skills", extra: str = "") -> str:
    """A publishable recipe: task arithmetic of two tiny fine-tunes, sources on the hub."""
    return f"""[package]
name = "{name}"
version = "{version}"
description = "Task arithmetic of two tiny fine-tunes"
tags = ["tiny", "llama"]
{deps}
[sources]
base = {{ hf = "tiny/base" }}
ft1 = {{ hf = "tiny/ft1" }}
ft2 = {{ hf = "tiny/ft2" }}
{extra}
[steps.skills]
method = "task_arithmetic"
base = "base"
inputs = [{{ model = "ft1", weight = {weight} }}, {{ model = "ft2", weight = {weight} }}]
"""


def app(rng: str = "^0.1", name: str = "app", version: str = "0.1.0") -> str:
    """A recipe that uses the `skills` step of the `skills` package as an input."""
    return f"""[package]
name = "{name}"
version = "{version}"

[dependencies]
skills = "{rng}"

[sources]
ft3 = {{ hf = "tiny/ft3" }}
skills = {{ dependency = "skills", step = "skills" }}

[steps.final]
method = "linear"
inputs = [{{ model = "skills", weight = 0.75 }}, {{ model = "ft3", weight = 0.25 }}]
"""


def new_registry(root: Path, name: str = "team") -> RegistryFolder:
    folder = RegistryFolder(root)
    folder.init(name)
    return folder


@contextlib.contextmanager
def serving(root: Path, limits=None):
    """A real waitress server for `root` on 127.0.0.1 (a free port); yields its base URL."""
    from mergepkg.registry.server import Limits, make_server

    server = make_server(root, "127.0.0.1", 0, threads=8, limits=limits or Limits())
    server.adj.asyncore_loop_timeout = 0.05  # its loop sees close() within 50 ms, not waitress's 1 s
    stopping = threading.Event()

    def run():
        try:
            server.run()
        except (OSError, ValueError):  # its sockets closed under the loop: only expected when stopping
            if not stopping.is_set():
                raise

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.effective_port}"
    finally:
        stopping.set()
        server.close()
        thread.join(timeout=5)

"""GGUF files for llama.cpp, made by llama.cpp's own converter (docs/export.md).

The converter is `convert_hf_to_gguf.py` of a llama.cpp source tree (a git checkout,
or `vendor/llama.cpp` of the llama-cpp-python source distribution), named by
MERGEPKG_LLAMA_CPP or `--llama-cpp`. It runs in a subprocess of this Python, on the
step's folder in the store, with the tree's own `gguf-py`; it writes f32, f16, bf16
and q8_0 itself. The other types (q4_k_m, ...) are made from its f32 file by llama.cpp's
quantizer, through llama-cpp-python (`quantize.py`, also a subprocess).

An export's key is over the step's key, the type and the converter's identity: a
sha256 over its code (`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/gguf/`), so a
changed converter makes new files and an unchanged one never converts twice. For a
quantized type the quantizer's version is in the key too. The converter writes the
same bytes for the same model (no timestamps), so the lock's sha256 of the file is a
check a rebuild can make.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mergepkg._lazy import lazy_import
from mergepkg._toml import tomllib
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import ExportError
from mergepkg.recipe.exports import CONVERTER_TYPES
from mergepkg.recipe.model import Export

metadata = lazy_import("importlib.metadata")  # read only for a quantized type: startup need not pay for it
SCRIPT = "convert_hf_to_gguf.py"
CODE = ("conversion", "gguf-py/gguf")  # beside SCRIPT: the converter's code, in its identity
QUANTIZER = "llama-cpp-python"  # the distribution whose llama.cpp quantizes
SETUP_HINT = (
    "point MERGEPKG_LLAMA_CPP (or --llama-cpp) at a llama.cpp source tree: "
    "`git clone https://github.com/ggml-org/llama.cpp`, or `vendor/llama.cpp` of "
    "`pip download --no-deps --no-binary :all: llama-cpp-python` (docs/export.md)"
)


@dataclass(frozen=True)
class Converter:
    """A llama.cpp converter on this machine: where it is and what code it runs."""

    root: Path  # the llama.cpp tree
    version: str  # for people: gguf-py's version, and the git commit when the tree is a checkout
    digest: str  # "sha256:..." over the converter's code: what keys use

    @property
    def identity(self) -> str:
        """What the lock records: the version and the code digest."""
        return f"{self.version} {self.digest}"


def find_converter(root: Path | None) -> Converter:
    """The converter in the llama.cpp tree `root` (settings.llama_cpp), checked."""
    if root is None:
        raise ExportError("GGUF export needs llama.cpp's converter, and none is set", hint=SETUP_HINT)
    root = root.resolve()
    if not (root / SCRIPT).is_file() or not all((root / c).is_dir() for c in CODE):
        raise ExportError(
            f"{root} is not a llama.cpp source tree: it lacks {SCRIPT}, conversion/ or gguf-py/", hint=SETUP_HINT
        )
    return _converter(root, _code_stamp(root))


def _code_stamp(root: Path) -> tuple[tuple[str, int, int], ...]:
    """Each code file's name, size and mtime: a changed tree is hashed again."""
    return tuple((str(p), (st := p.stat()).st_size, st.st_mtime_ns) for p in _code_files(root))


@functools.lru_cache(maxsize=8)
def _converter(root: Path, stamp: tuple[tuple[str, int, int], ...]) -> Converter:
    h = hashlib.sha256()
    for path in _code_files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes() + b"\0")
    return Converter(root, _version(root), "sha256:" + h.hexdigest())


def _code_files(root: Path) -> list[Path]:
    return [root / SCRIPT, *sorted(p for c in CODE for p in (root / c).rglob("*.py"))]


def _version(root: Path) -> str:
    """`gguf-py 0.19.0`, with `, commit 1a2b3c4d5e6f` for a git checkout."""
    try:
        version = tomllib.loads((root / "gguf-py" / "pyproject.toml").read_text())["project"]["version"]
    except (OSError, KeyError, TypeError, tomllib.TOMLDecodeError):
        version = "unknown"
    commit = _git_commit(root / ".git")
    return f"gguf-py {version}" + (f", commit {commit[:12]}" if commit else "")


def _git_commit(git: Path) -> str | None:
    try:
        head = (git / "HEAD").read_text().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        if (git / ref).is_file():
            return (git / ref).read_text().strip()
        for line in (git / "packed-refs").read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    except OSError:
        return None
    return None


def quantizer_version(kind: str) -> str | None:
    """The quantizer a type needs (`llama-cpp-python 0.3.36`), or None for the converter's own types."""
    if kind in CONVERTER_TYPES:
        return None
    try:
        return f"{QUANTIZER} {metadata.version(QUANTIZER)}"
    except metadata.PackageNotFoundError:
        raise ExportError(
            f"GGUF type {kind} is made by llama.cpp's quantizer, and llama-cpp-python is not installed",
            hint="pip install 'mergepkg[llama]' (it compiles llama.cpp), or choose f32, f16, bf16 or q8_0",
        ) from None


def export_key(export: Export, step_key: str, converter: Converter) -> str:
    """The export's key: the step's key, the format and type, the converter's code digest
    and, for a quantized type, the quantizer's version. Not the export's name: two
    recipes exporting the same step alike share the file."""
    entry = {
        "export": export.format,
        "type": export.type,
        "step": step_key,
        "converter": converter.digest,
        "quantizer": quantizer_version(export.type),
    }
    return sha256_hex(canonical_json(entry))


def check_model(folder: Path, converter: Converter) -> None:
    """Refuse, before converting, a model whose architecture the converter lacks."""
    try:
        architectures = json.loads((folder / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        raise ExportError("the model has no readable config.json", file=folder / "config.json") from None
    known = _architectures(converter.root / CODE[0] / "__init__.py")
    if known and not any(a in known for a in architectures):
        raise ExportError(
            f"llama.cpp's converter has no support for architecture {', '.join(architectures) or '(none named)'}",
            file=folder / "config.json",
            hint=f"its converter ({converter.version}) knows {len(known)} architectures; "
            f"`python {converter.root / SCRIPT} --print-supported-models` lists them",
        )


def _architectures(module: Path) -> set[str]:
    """The architectures in the converter's TEXT_MODEL_MAP (empty if it cannot be read)."""
    try:
        text = module.read_text()
    except OSError:
        return set()
    table = re.search(r"TEXT_MODEL_MAP[^{]*\{(.*?)\n\}", text, re.S)
    return set(re.findall(r'"(\w+)"\s*:', table.group(1))) if table else set()


def convert(folder: Path, out: Path, kind: str, converter: Converter, threads: int | None = None) -> None:
    """Write the GGUF file `out` of the model in `folder` (into a temp folder of the
    caller's: a failure leaves a partial file there, never anywhere else)."""
    direct = kind in CONVERTER_TYPES
    first = out if direct else out.with_name(out.name + ".f32")
    command = [sys.executable, str(converter.root / SCRIPT), str(folder), "--outfile", str(first)]
    _run([*command, "--outtype", kind if direct else "f32"], "llama.cpp's converter")
    if not direct:
        quantize = [sys.executable, "-m", "mergepkg.export.quantize", str(first), str(out), kind]
        _run([*quantize, str(threads or os.cpu_count() or 1)], "llama.cpp's quantizer")
        first.unlink()


def _run(command: list[str], what: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")  # reads the folder, never the Hub
    done = subprocess.run(command, capture_output=True, text=True, env=env, errors="replace")
    if done.returncode != 0:
        raise failure(what, done.stdout + done.stderr)


def failure(what: str, output: str) -> ExportError:
    """The error a failed converter (or quantizer) run gives, from what it printed."""
    if "pre-tokenizer was not recognized" in output:
        return ExportError(
            f"{what} does not know this model's tokenizer (its pre-tokenizer is not in llama.cpp's list)",
            hint="llama.cpp takes a SentencePiece tokenizer.model as it is, and recognises a "
            "tokenizer.json by the ids it gives a test text (convert_hf_to_gguf_update.py)",
        )
    if found := re.search(r"Model (\S+) is not supported", output):
        return ExportError(f"{what} has no support for architecture {found.group(1)}")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR") or "Error" in line or "error" in line]
    last = (errors or lines or ["(it printed nothing)"])[-1]
    return ExportError(f"{what} failed: {last[:500]}", hint="run with --debug to see all it printed")

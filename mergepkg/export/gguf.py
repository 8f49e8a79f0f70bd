"""GGUF files for llama.cpp, made by llama.cpp's own converter (docs/export.md).

The converter is `convert_hf_to_gguf.py` of a llama.cpp source tree (a git checkout,
or `vendor/llama.cpp` of the llama-cpp-python source distribution), named by
MERGEPKG_LLAMA_CPP or `--llama-cpp`. It runs in a subprocess of this Python, with the
tree's own `gguf-py`, on the step's files in the store seen as the placed output folder
(its name, its model card's front matter): the converter takes the GGUF's name, tags
and base models from there, so a file reads as the converter makes it from `--out`,
not named after a store key. It writes f32, f16, bf16 and q8_0 itself. The other types
(q4_k_m, ...) are made from its f32 file by llama.cpp's quantizer, through
llama-cpp-python (`quantize.py`, also a subprocess).

An export's key is the sha256 of its entry (`export_entry`, also the store manifest's
entry): the step's key, the type, the converter's identity (a sha256 over its code:
`convert_hf_to_gguf.py`, `conversion/`, `gguf-py/gguf/`) and the metadata it is given,
so a changed converter makes new files and an unchanged one never converts twice. For
a quantized type the quantizer's version is in the key too. The converter writes the
same bytes for the same model (no timestamps), so the lock's sha256 of the file is a
check a rebuild can make.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergepkg._lazy import lazy_import
from mergepkg._toml import tomllib
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import DiskError, ExportError, disk_error
from mergepkg.recipe.exports import CONVERTER_TYPES
from mergepkg.recipe.model import Export
from mergepkg.store.local import MANIFEST

CARD = "README.md"  # the model card, whose front matter the converter reads
package_metadata = lazy_import("importlib.metadata")  # read only for a quantized type: startup need not pay for it
SCRIPT = "convert_hf_to_gguf.py"
CODE = ("conversion", "gguf-py/gguf")  # beside SCRIPT: the converter's code, in its identity
QUANTIZER = "llama-cpp-python"  # the distribution whose llama.cpp quantizes
QUANTIZER_HINT = (
    "the quantizer is llama-cpp-python's build of llama.cpp, which may be older than the converter's "
    "tree (an architecture the converter writes may be unknown to it): upgrade llama-cpp-python, or "
    "choose a type the converter writes itself (f32, f16, bf16, q8_0)"
)
# the version of export keys: 2 added the metadata the converter is given (general.name, ...)
KEY_VERSION = 2
MAGIC = b"GGUF"  # a GGUF file's first bytes
SETUP_HINT = (  # names no option: most commands that may need it have none (--llama-cpp is build's and export's)
    "set MERGEPKG_LLAMA_CPP to a llama.cpp source tree: "
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


def identity_digest(identity: str) -> str:
    """The code digest in a converter's identity as a lock records it (`gguf-py 0.19.0 sha256:...`)."""
    return identity.rpartition(" ")[2]


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
        return f"{QUANTIZER} {package_metadata.version(QUANTIZER)}"
    except package_metadata.PackageNotFoundError:
        raise ExportError(
            f"GGUF type {kind} is made by llama.cpp's quantizer, and llama-cpp-python is not installed",
            hint="pip install 'mergepkg[llama]' (it compiles llama.cpp), or choose f32, f16, bf16 or q8_0",
        ) from None


def export_entry(export: Export, step_key: str, converter: str, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """What an export's key is the sha256 of (and its store manifest's entry): the step's
    key, the format and type, the converter's code digest (`converter`: a
    `Converter.digest`), the metadata the converter is given (`model_metadata`) and, for
    a quantized type, the quantizer's version. Not the export's name: two recipes
    exporting the same step alike share the file."""
    return {
        "export": export.format,
        "version": KEY_VERSION,
        "type": export.type,
        "step": step_key,
        "converter": converter,
        "metadata": dict(metadata),
        "quantizer": quantizer_version(export.type),
    }


def export_key(entry: Mapping[str, Any]) -> str:
    """The key of an `export_entry`."""
    return sha256_hex(canonical_json(dict(entry)))


def model_metadata(name: str, base_models: list[str], tags: list[str]) -> dict[str, Any]:
    """What the converter reads about a model beside its weights, as it would find it in
    the placed output folder: the folder's name (general.name, basename, finetune...) and
    its model card's `base_model` and `tags` (builder/card.py writes them)."""
    return {"name": name, "base_model": list(base_models), "tags": list(tags)}


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


def convert(
    folder: Path,
    out: Path,
    kind: str,
    converter: Converter,
    metadata: Mapping[str, Any],
    threads: int | None = None,
) -> None:
    """Write the GGUF file `out` of the model in `folder` (into a temp folder of the
    caller's: a failure leaves a partial file there, never anywhere else), the converter
    given `metadata` (`model_metadata`) as the placed output folder would give it."""
    direct = kind in CONVERTER_TYPES
    first = out if direct else out.with_name(out.name + ".f32")
    staged = out.with_name(out.name + ".model")
    try:
        model = stage_model(folder, staged, metadata)
        command = [sys.executable, str(converter.root / SCRIPT), str(model), "--outfile", str(first)]
        _run([*command, "--outtype", kind if direct else "f32"], "llama.cpp's converter")
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    check_gguf(first, "llama.cpp's converter")
    if not direct:
        quantize = [sys.executable, "-m", "mergepkg.export.quantize", str(first), str(out), kind]
        _run([*quantize, str(threads or os.cpu_count() or 1)], "llama.cpp's quantizer")
        first.unlink()
        check_gguf(out, "llama.cpp's quantizer")


def stage_model(folder: Path, under: Path, metadata: Mapping[str, Any]) -> Path:
    """`under/NAME/`: the files of `folder` (symlinked) and a README.md holding only the
    model card's front matter: the converter names the GGUF after the folder and reads
    the card's base models and tags, as it would in the placed output folder. JSON is
    YAML, so the front matter needs no YAML writer."""
    model = under / metadata["name"]
    model.mkdir(parents=True)
    for f in folder.iterdir():
        if f.name not in (MANIFEST, CARD):
            (model / f.name).symlink_to(f.resolve())
    card = {k: metadata[k] for k in ("base_model", "tags") if metadata.get(k)}
    (model / CARD).write_text(f"---\n{json.dumps(card, sort_keys=True)}\n---\n", encoding="utf-8")
    return model


def check_gguf(path: Path, what: str) -> None:
    """A located error where a run that said it succeeded left no GGUF file."""
    try:
        with path.open("rb") as f:
            head = f.read(len(MAGIC))
    except FileNotFoundError:
        raise ExportError(f"{what} exited without error but wrote no file") from None
    if head != MAGIC:
        raise ExportError(
            f"{what} wrote a file that is not GGUF (it starts with {head!r})",
            hint="is MERGEPKG_LLAMA_CPP a real llama.cpp tree? run with --debug to see all it printed",
        )


def _run(command: list[str], what: str) -> None:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONIOENCODING="utf-8")  # reads the folder, never the Hub
    done = subprocess.run(command, capture_output=True, text=True, env=env, errors="replace")
    if done.returncode != 0:
        error = failure(what, done.stdout + done.stderr)
        error.add_note(f"{what} printed:\n{done.stdout}{done.stderr}")  # shown by --debug with the traceback
        raise error


# what the converter's writers (numpy's tofile, Python's own writes) and the quantizer print when the disk is full
FULL_DISK = re.compile(r"No space left on device|\d+ requested and \d+ written|\[Errno 28\]")


def failure(what: str, output: str) -> ExportError | DiskError:
    """The error a failed converter (or quantizer) run gives, from what it printed: a full
    disk as every other full disk is said (errors.disk_error), not as the converter's fault."""
    if FULL_DISK.search(output):
        full = disk_error(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), f"{what} wrote the GGUF file")
        assert full is not None
        return full
    if "pre-tokenizer was not recognized" in output:
        return ExportError(
            f"{what} does not know this model's tokenizer (its pre-tokenizer is not in llama.cpp's list)",
            hint="llama.cpp takes a SentencePiece tokenizer.model as it is, and recognises a "
            "tokenizer.json by the ids it gives a test text (convert_hf_to_gguf_update.py)",
        )
    if found := re.search(r"Model (\S+) is not supported", output):
        return ExportError(f"{what} has no support for architecture {found.group(1)}")
    if reasons := re.findall(r"failed to quantize: (.+)", output):  # llama.cpp's own reason (quantize.py)
        return ExportError(f"{what} failed: {reasons[-1].strip()[:500]}", hint=QUANTIZER_HINT)
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR") or "rror" in line or "failed" in line]
    last = (errors or lines or ["(it printed nothing)"])[-1]
    return ExportError(f"{what} failed: {last[:500]}", hint="run with --debug to see all it printed")

"""A corpus of faulty inputs, each refused cleanly: recipes, model folders, command lines
and registry requests (docs/reliability.md).

For recipes, model folders and command lines, each case starts from a recipe that built
(its store, lock and output in place), breaks one thing, runs `mergepkg` and asserts:
the exit code; stderr is one located `error:` line (and at most a hint), no traceback;
nothing changed in the store, the output folder, the lock, or anywhere else in the
case's folder. Registry requests go to a real `registry serve` on 127.0.0.1 and assert
the status, a one-line JSON error that names no path of the server, and an unchanged
registry folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import cli
from registries import new_registry, serving, skills

from mergepkg.registry.server import MAX_BODY

pytestmark = pytest.mark.slow  # builds the tiny models, and a store to keep unchanged

GOOD = """\
[package]
name = "corpus"
version = "0.1.0"

[sources]
base = { path = "models/base" }
ft1 = { path = "models/ft1" }
ft2 = { path = "models/ft2" }

[steps.merged]
method = "ties"
base = "base"
inputs = [{ model = "ft1", weight = 0.5, density = 0.5 }, { model = "ft2", weight = 0.5, density = 0.5 }]
"""
BUILD = ["build", "recipe.toml", "--out", "out", "-q"]
# bookkeeping a failed command may touch: the hash cache, lock files, the store's in-use lock
BOOKKEEPING = ("home/hashes.sqlite", "home/locks/", "home/store.lock")


@dataclass(frozen=True)
class Case:
    id: str
    change: Callable[[Path], None]  # breaks one thing in the case folder
    at: str  # where the error line must point (a file name, with the line when there is one)
    says: str  # what it must say
    args: tuple[str, ...] = tuple(BUILD)
    code: int = 1


def recipe(old: str, new: str) -> Callable[[Path], None]:
    """The good recipe with `old` replaced by `new`."""

    def change(case: Path) -> None:
        text = (case / "recipe.toml").read_text()
        assert old in text, old
        (case / "recipe.toml").write_text(text.replace(old, new))

    return change


def recipe_text(text: str) -> Callable[[Path], None]:
    def change(case: Path) -> None:
        (case / "recipe.toml").write_text(text)

    return change


def step(body: str) -> Callable[[Path], None]:
    """The good recipe's step replaced by `body` (its first line is line 10)."""
    head = GOOD[: GOOD.index("[steps.merged]")]
    return recipe_text(head + textwrap.dedent(body).lstrip("\n"))


def header(model: str, edit: Callable[[dict], None], *, size: Callable[[int], int] | None = None):
    """Rewrite `model`'s safetensors header with `edit`; `size` changes the data's length."""

    def change(case: Path) -> None:
        path = case / "models" / model / "model.safetensors"
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        head, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
        edit(head)
        text = json.dumps(head).encode()
        data = data[: size(len(data))] if size else data
        path.write_bytes(struct.pack("<Q", len(text)) + text + data)

    return change


def first_tensor(head: dict) -> dict:
    return head[min((k for k in head if k != "__metadata__"), key=lambda k: head[k]["data_offsets"][0])]


def entry(name: str) -> Callable[[dict], dict]:
    return lambda head: head[name]


def write(rel: str, content: str | bytes) -> Callable[[Path], None]:
    def change(case: Path) -> None:
        path = case / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return change


def remove(rel: str) -> Callable[[Path], None]:
    def change(case: Path) -> None:
        target = case / rel
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return change


def link(rel: str, to: str) -> Callable[[Path], None]:
    def change(case: Path) -> None:
        (case / rel).symlink_to(to)

    return change


def both(*changes: Callable[[Path], None]) -> Callable[[Path], None]:
    def change(case: Path) -> None:
        for c in changes:
            c(case)

    return change


def sharded(model: str, weight_map: dict) -> Callable[[Path], None]:
    """`model` with an index naming shards as `weight_map` says."""
    return write(f"models/{model}/model.safetensors.index.json", json.dumps({"weight_map": weight_map}))


def to_bin(model: str, data: bytes) -> Callable[[Path], None]:
    """`model`'s weights as a pytorch_model.bin holding `data`."""
    return both(remove(f"models/{model}/model.safetensors"), write(f"models/{model}/pytorch_model.bin", data))


class Boom:
    """Runs a command when unpickled: what torch.load(weights_only=True) must refuse."""

    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/mergepkg-corpus-pwned",))


def malicious_pickle() -> bytes:
    """A real torch checkpoint (zip, as torch.save writes) whose pickle calls os.system."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save({"model.embed_tokens.weight": Boom()}, buffer)
    return buffer.getvalue()


def append(rel: str, data: bytes) -> Callable[[Path], None]:
    def change(case: Path) -> None:
        with open(case / rel, "ab") as f:
            f.write(data)

    return change


def drop(model: str, tensor: str) -> Callable[[Path], None]:
    """`model` without `tensor`: its entry and its bytes gone, the rest rewritten in order."""

    def change(case: Path) -> None:
        path = case / "models" / model / "model.safetensors"
        raw = path.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        head, data = json.loads(raw[8 : 8 + n]), raw[8 + n :]
        head.pop("__metadata__", None)
        head.pop(tensor)
        kept, offset, new = b"", 0, {}
        for name, meta in sorted(head.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            a, b = meta["data_offsets"]
            new[name] = {**meta, "data_offsets": [offset, offset + b - a]}
            kept += data[a:b]
            offset += b - a
        text = json.dumps(new).encode()
        path.write_bytes(struct.pack("<Q", len(text)) + text + kept)

    return change


EMBED = "model.embed_tokens.weight"
HEAD = "lm_head.weight"

RECIPES = [
    Case("toml-syntax", recipe('version = "0.1.0"', "version = "), "recipe.toml:3", "invalid TOML"),
    Case("toml-deep", recipe_text("x = " + "[" * 5000 + "]" * 5000 + "\n"), "recipe.toml", "nested too deeply"),
    Case("unknown-top-key", recipe("[sources]", "[source]"), "recipe.toml", "unknown key 'source'"),
    Case("no-package", recipe('[package]\nname = "corpus"\nversion = "0.1.0"\n', ""), "recipe.toml", "[package]"),
    Case("name-nul", recipe('name = "corpus"', 'name = "cor\\u0000pus"'), "recipe.toml:2", "invalid package name"),
    Case("name-300", recipe('name = "corpus"', f'name = "{"x" * 300}"'), "recipe.toml:2", "invalid package name"),
    Case("name-dotdot", recipe('name = "corpus"', 'name = "../../x"'), "recipe.toml:2", "invalid package name"),
    Case("name-absolute", recipe('name = "corpus"', 'name = "/abs/path"'), "recipe.toml:2", "invalid package name"),
    Case("name-empty", recipe('name = "corpus"', 'name = ""'), "recipe.toml:2", "invalid package name"),
    Case("name-newline", recipe('name = "corpus"', 'name = "corpus\\n"'), "recipe.toml:2", "invalid package name"),
    Case("name-three-parts", recipe('name = "corpus"', 'name = "a/b/c"'), "recipe.toml:2", "invalid package name"),
    Case("name-int", recipe('name = "corpus"', "name = 7"), "recipe.toml:2", "expected a string"),
    Case("version-int", recipe('version = "0.1.0"', "version = 1"), "recipe.toml:3", "expected a version"),
    Case("seed-str", recipe('version = "0.1.0"', 'version = "0.1.0"\nseed = "x"'), "recipe.toml:4", "integer"),
    Case("tags-str", recipe('version = "0.1.0"', 'version = "0.1.0"\ntags = "a"'), "recipe.toml:4", "list"),
    Case(
        "outputs-empty",
        recipe('version = "0.1.0"', 'version = "0.1.0"\noutputs = []'),
        "recipe.toml:4",
        "names no step",
    ),
    Case(
        "outputs-unknown",
        recipe('version = "0.1.0"', 'version = "0.1.0"\noutputs = ["nope"]'),
        "recipe.toml:4",
        "no step named 'nope'",
    ),
    Case(
        "source-unknown-key",
        recipe('ft2 = { path = "models/ft2" }', 'ft2 = { path = "models/ft2", rev = 1 }'),
        "recipe.toml:8",
        "unknown key 'rev'",
    ),
    Case(
        "source-two-kinds",
        recipe('ft2 = { path = "models/ft2" }', 'ft2 = { path = "models/ft2", hf = "a/b" }'),
        "recipe.toml:8",
        "exactly one of",
    ),
    Case("source-missing-folder", recipe('"models/ft2"', '"models/nope"'), "recipe.toml:8", "model folder not found"),
    Case(
        "source-hf-bad-id",
        recipe('ft2 = { path = "models/ft2" }', 'ft2 = { hf = "../../etc" }'),
        "recipe.toml:8",
        "not a Hugging Face repo id",
    ),
    Case(
        "source-bad-name",
        recipe('ft2 = { path = "models/ft2" }', '"ft 2" = { path = "models/ft2" }'),
        "recipe.toml",
        "invalid name",
    ),
    Case(
        "source-revision-on-path",
        recipe('ft2 = { path = "models/ft2" }', 'ft2 = { path = "models/ft2", revision = "x" }'),
        "recipe.toml:8",
        "no `revision`",
    ),
    Case(
        "recipe-source-missing",
        recipe('ft2 = { path = "models/ft2" }', 'ft2 = { recipe = "nope.toml", step = "s" }'),
        "recipe.toml:8",
        "recipe file not found",
    ),
    Case("step-unknown-key", recipe('base = "base"', 'base = "base"\nbasis = 1'), "recipe.toml:13", "unknown key"),
    Case("method-typo", recipe('method = "ties"', 'method = "tie"'), "recipe.toml:11", "did you mean 'ties'"),
    Case("method-int", recipe('method = "ties"', "method = 3"), "recipe.toml:11", "method name"),
    Case("base-missing", recipe('base = "base"\n', ""), "recipe.toml", "needs a base"),
    Case("base-on-linear", recipe('method = "ties"', 'method = "linear"'), "recipe.toml:12", "takes no base"),
    Case("input-unknown", recipe('{ model = "ft2"', '{ model = "ft9"'), "recipe.toml:13", "no source or step named"),
    Case("input-is-base", recipe('{ model = "ft2"', '{ model = "base"'), "recipe.toml:13", "already the base"),
    Case("input-is-self", recipe('{ model = "ft2"', '{ model = "merged"'), "recipe.toml:13", "itself"),
    Case(
        "inputs-and-slices",
        recipe('base = "base"', 'base = "base"\nslices = [{ sources = [{ model = "base", layers = [0, 1] }] }]'),
        "recipe.toml",
        "not both",
    ),
    Case(
        "inputs-not-list",
        step("""
        [steps.merged]
        method = "ties"
        base = "base"
        inputs = "ft1"
        """),
        "recipe.toml:13",
        "a list of inputs",
    ),
    Case(
        "density-high",
        recipe("density = 0.5 }, { model", "density = 1.5 }, { model"),
        "recipe.toml:13",
        "expected a number in (0, 1]",
    ),
    Case("density-zero", recipe("density = 0.5 }, { model", "density = 0 }, { model"), "recipe.toml:13", "(0, 1]"),
    Case(
        "weight-past-float32",
        recipe('"ft1", weight = 0.5', '"ft1", weight = 1e308'),
        "recipe.toml:13",
        "a number float32 can hold",
    ),
    Case(
        "density-str",
        recipe("density = 0.5 }, { model", 'density = "half" }, { model'),
        "recipe.toml:13",
        "expected a number",
    ),
    Case(
        "density-nan",
        recipe("density = 0.5 }, { model", "density = nan }, { model"),
        "recipe.toml:13",
        "expected a number",
    ),
    Case(
        "param-unknown",
        recipe("density = 0.5 }, { model", "densty = 0.5 }, { model"),
        "recipe.toml:13",
        "did you mean 'density'",
    ),
    Case(
        "param-step-wide-on-input",
        recipe("density = 0.5 }, { model", "normalize = true }, { model"),
        "recipe.toml:13",
        "once per step",
    ),
    Case("gradient-empty", recipe("density = 0.5 }, { model", "density = [] }, { model"), "recipe.toml:13", "gradient"),
    Case(
        "condition-no-value",
        recipe("density = 0.5 }, { model", 'density = { filter = "mlp" } }, { model'),
        "recipe.toml:13",
        "missing `value`",
    ),
    Case(
        "filter-not-string",
        recipe("density = 0.5 }, { model", "density = { filter = 3, value = 0.5 } }, { model"),
        "recipe.toml:13",
        "substring",
    ),
    Case(
        "dtype-unknown", recipe('base = "base"', 'base = "base"\ndtype = "float8"'), "recipe.toml:13", "unknown dtype"
    ),
    Case(
        "out-dtype-unknown",
        recipe('base = "base"', 'base = "base"\nout_dtype = "int8"'),
        "recipe.toml:13",
        "unknown dtype",
    ),
    Case(
        "tokenizer-unknown-model",
        recipe('base = "base"', 'base = "base"\ntokenizer = "ft9"'),
        "recipe.toml:13",
        "not a model of this step",
    ),
    Case(
        "tokens-bad",
        recipe('base = "base"', 'base = "base"\ntokenizer = { source = "union", tokens = 3 }'),
        "recipe.toml:13",
        "table of tokens",
    ),
    Case(
        "linear-weights-zero",
        step("""
        [steps.merged]
        method = "linear"
        inputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = -1 }]
        """),
        "recipe.toml:10",
        "linear weights sum to 0",
    ),
    Case(
        "della-band",
        step("""
        [steps.merged]
        method = "della"
        base = "base"
        inputs = [{ model = "ft1", weight = 1, density = 0.1, epsilon = 0.2 }]
        """),
        "recipe.toml:10",
        "density ± epsilon",
    ),
    Case(
        "slice-past-layers",
        step("""
        [steps.merged]
        method = "passthrough"
        slices = [{ sources = [{ model = "ft1", layers = [0, 9] }] }]
        """),
        "recipe.toml",
        "go past the 4 layers",
    ),
    Case(
        "slice-unequal",
        step("""
        [steps.merged]
        method = "linear"
        slices = [{ sources = [{ model = "ft1", layers = [0, 2], weight = 1 }, { model = "ft2", layers = [0, 3], weight = 1 }] }]
        """),
        "recipe.toml",
        "same number of layers",
    ),
    Case(
        "slice-reversed",
        step("""
        [steps.merged]
        method = "passthrough"
        slices = [{ sources = [{ model = "ft1", layers = [3, 1] }] }]
        """),
        "recipe.toml",
        "0 <= start < end",
    ),
    Case(
        "slerp-two-inputs",
        step("""
        [steps.merged]
        method = "slerp"
        base = "base"
        inputs = ["ft1", "ft2"]
        params = { t = 0.5 }
        """),
        "recipe.toml",
        "takes exactly 1",
    ),
    Case(
        "slerp-t-missing",
        step("""
        [steps.merged]
        method = "slerp"
        base = "base"
        inputs = ["ft1"]
        """),
        "recipe.toml",
        "missing parameter 't'",
    ),
    Case(
        "cycle",
        step("""
        [steps.merged]
        method = "linear"
        inputs = [{ model = "other", weight = 1 }]
        [steps.other]
        method = "linear"
        inputs = [{ model = "merged", weight = 1 }]
        """),
        "recipe.toml",
        "cycle",
    ),
    Case(
        "step-name-source",
        step("""
        [steps.ft1]
        method = "linear"
        inputs = [{ model = "ft2", weight = 1 }]
        """),
        "recipe.toml",
        "names both a source and a step",
    ),
    Case("no-steps", step(""), "recipe.toml", "at least one [steps.NAME]"),
    Case(
        "dependency-bad-range",
        recipe('version = "0.1.0"\n', 'version = "0.1.0"\n[dependencies]\nx = "^^1"\n'),
        "recipe.toml:5",
        "range",
    ),
    Case(
        "dependency-bad-name",
        recipe('version = "0.1.0"\n', 'version = "0.1.0"\n[dependencies]\n"../x" = "^1"\n'),
        "recipe.toml",
        "invalid package name",
    ),
    Case(
        "dependency-self",
        recipe('version = "0.1.0"\n', 'version = "0.1.0"\n[dependencies]\ncorpus = "^1"\n'),
        "recipe.toml:5",
        "depends on itself",
    ),
    Case(
        "moe-bad-experts-per-token",
        step("""
        [steps.merged]
        method = "moe"
        base = "base"
        experts = [{ model = "ft1", prompts = ["a"] }]
        params = { experts_per_token = 2, gate_mode = "cheap_embed" }
        """),
        "recipe.toml",
        "experts_per_token is 2",
    ),
    Case(
        "moe-same-prompts",
        step("""
        [steps.merged]
        method = "moe"
        base = "base"
        experts = [{ model = "ft1", prompts = ["a"] }, { model = "ft2", prompts = ["a"] }]
        """),
        "recipe.toml",
        "same prompts",
    ),
    Case(
        "moe-no-prompts",
        step("""
        [steps.merged]
        method = "moe"
        base = "base"
        experts = [{ model = "ft1" }, { model = "ft2" }]
        """),
        "recipe.toml",
        "needs prompts",
    ),
    Case(
        "moe-gate-mode",
        step("""
        [steps.merged]
        method = "moe"
        base = "base"
        experts = [{ model = "ft1", prompts = ["a"] }, { model = "ft2", prompts = ["b"] }]
        params = { gate_mode = "hiden" }
        """),
        "recipe.toml",
        "did you mean 'hidden'",
    ),
    Case(
        "moe-base-as-expert",
        step("""
        [steps.merged]
        method = "moe"
        base = "base"
        experts = [{ model = "base", prompts = ["a"] }, { model = "ft2", prompts = ["b"] }]
        """),
        "recipe.toml",
        "is the base model itself",
    ),
]

MODELS = [
    Case("no-config", remove("models/ft1/config.json"), "models/ft1", "no config.json"),
    Case("config-not-json", write("models/ft1/config.json", "{"), "models/ft1", "config.json"),
    Case("config-deep", write("models/ft1/config.json", "[" * 100000 + "]" * 100000), "models/ft1", "config.json"),
    Case("config-not-object", write("models/ft1/config.json", "[1, 2]"), "models/ft1", "not a JSON object"),
    Case("no-weights", remove("models/ft1/model.safetensors"), "models/ft1", "no model weights"),
    Case(
        "weights-a-folder",
        both(remove("models/ft1/model.safetensors"), write("models/ft1/model.safetensors/x", "")),
        "models/ft1/model.safetensors",
        "not a readable file",
    ),
    Case(
        "weights-a-link-loop",
        both(remove("models/ft1/model.safetensors"), link("models/ft1/model.safetensors", "model.safetensors")),
        "models/ft1/model.safetensors",
        "not a readable file",
    ),
    Case(
        "header-too-long",
        write("models/ft1/model.safetensors", struct.pack("<Q", 10**12) + b"{}"),
        "model.safetensors",
        "not a safetensors file",
    ),
    Case("file-tiny", write("models/ft1/model.safetensors", b"\x01\x02"), "model.safetensors", "not a safetensors"),
    Case(
        "header-not-json",
        write("models/ft1/model.safetensors", struct.pack("<Q", 3) + b"{x}"),
        "model.safetensors",
        "unreadable safetensors header",
    ),
    Case(
        "header-list",
        write("models/ft1/model.safetensors", struct.pack("<Q", 2) + b"[]"),
        "model.safetensors",
        "not a JSON object",
    ),
    Case(
        "header-deep",
        write("models/ft1/model.safetensors", struct.pack("<Q", 200000) + b"[" * 100000 + b"]" * 100000),
        "model.safetensors",
        "unreadable safetensors header",
    ),
    Case("entry-not-object", header("ft1", lambda h: h.update({EMBED: 3})), "model.safetensors", "not an object"),
    Case(
        "header-dtype-unknown",
        header("ft1", lambda h: h[EMBED].update(dtype="F128")),
        "model.safetensors",
        "unknown dtype",
    ),
    Case(
        "shape-negative",
        header("ft1", lambda h: h[EMBED].update(shape=[-1, 4])),
        "model.safetensors",
        "not a list of sizes",
    ),
    Case(
        "shape-string",
        header("ft1", lambda h: h[EMBED].update(shape="big")),
        "model.safetensors",
        "not a list of sizes",
    ),
    Case(
        "offsets-reversed",
        header("ft1", lambda h: h[EMBED].update(data_offsets=[10, 2])),
        "model.safetensors",
        "data_offsets",
    ),
    Case(
        "offsets-wrong-size", header("ft1", lambda h: h[EMBED].update(shape=[2, 2])), "model.safetensors", "bytes for a"
    ),
    Case("offsets-past-end", header("ft1", lambda h: None, size=lambda n: n - 100), "model.safetensors", "truncated"),
    Case(
        "trailing-bytes",
        append("models/ft1/model.safetensors", b"xx"),
        "model.safetensors",
        "longer than its header says",
    ),
    Case(
        "overlap",
        header("ft1", lambda h: h[EMBED].update(data_offsets=list(h[HEAD]["data_offsets"]))),
        "model.safetensors",
        "safetensors header: tensor",
    ),
    Case(
        "no-tensors",
        header("ft1", lambda h: [h.pop(k) for k in list(h) if k != "__metadata__"], size=lambda n: 0),
        "recipe.toml",
        "has no tensor",
    ),
    Case(
        "index-missing-shard",
        sharded("ft1", {EMBED: "model-00002-of-00002.safetensors"}),
        "model.safetensors.index.json",
        "which is missing",
    ),
    Case(
        "index-outside",
        sharded("ft1", {EMBED: "../ft2/model.safetensors"}),
        "model.safetensors.index.json",
        "not a file inside the model folder",
    ),
    Case(
        "index-absolute",
        sharded("ft1", {EMBED: "/etc/passwd"}),
        "model.safetensors.index.json",
        "not a file inside the model folder",
    ),
    Case(
        "index-not-json",
        write("models/ft1/model.safetensors.index.json", "{"),
        "model.safetensors.index.json",
        "unreadable weight index",
    ),
    Case(
        "index-no-map",
        write("models/ft1/model.safetensors.index.json", "{}"),
        "model.safetensors.index.json",
        "unreadable weight index",
    ),
    Case(
        "index-map-list",
        write("models/ft1/model.safetensors.index.json", '{"weight_map": [1]}'),
        "model.safetensors.index.json",
        "unreadable weight index",
    ),
    Case("bin-malicious", to_bin("ft1", malicious_pickle()), "pytorch_model.bin", "refused to load"),
    Case("bin-garbage", to_bin("ft1", b"not a checkpoint at all"), "pytorch_model.bin", "refused to load"),
    Case("bin-empty", to_bin("ft1", b""), "pytorch_model.bin", "refused to load"),
    Case(
        "hidden-size",
        write(
            "models/ft1/config.json",
            json.dumps(
                {
                    "architectures": ["LlamaForCausalLM"],
                    "model_type": "llama",
                    "num_hidden_layers": 4,
                    "hidden_size": 48,
                }
            ),
        ),
        "recipe.toml",
        "'ft1' has hidden size 48 but 'base' has 32",
    ),
    Case(
        "layers-count",
        write(
            "models/ft1/config.json",
            json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": 3}),
        ),
        "recipe.toml",
        "has 3 layers",
    ),
    Case("missing-tensor", drop("ft1", HEAD), "recipe.toml", "has no tensor lm_head.weight"),
    Case("extra-tensor", drop("base", HEAD), "recipe.toml", "lacks"),
    Case(
        "tokenizer-damaged",
        both(write("models/ft1/tokenizer.json", "{"), recipe('base = "base"', 'base = "base"\ntokenizer = "union"')),
        "tokenizer.json",
        "cannot read tokenizer.json",
    ),
]


def _tamper(lock: Path, what: str) -> None:
    """Change the lock as someone editing it by hand would."""
    text = lock.read_text()

    def flip(marker: str) -> str:  # one hex digit after `marker`
        start = text.index(marker) + len(marker)
        return text[:start] + ("0" if text[start] != "0" else "1") + text[start + 1 :]

    if what == "key":
        text = flip('key = "')
    elif what == "digest":
        text = flip('digest = "sha256:')
    elif what == "file-sha":
        text = flip('sha256 = "')
    elif what == "recipe-hash":
        text = flip('recipe = "sha256:')
    elif what == "version":
        text = text.replace("version = 1", "version = 99", 1)
    elif what == "no-key":
        text = "\n".join(line for line in text.splitlines() if not line.startswith("key = ")) + "\n"
    elif what == "key-not-hex":
        text = text.replace('key = "', 'key = "../../', 1)
    elif what == "size-str":
        text = text.replace("size = ", 'size = "', 1).replace("\nsha256", '"\nsha256', 1)
    elif what == "files-str":
        import tomli_w

        from mergepkg._toml import tomllib

        data = tomllib.loads(text)
        data["source"][0]["files"] = "all"
        text = tomli_w.dumps(data)
    elif what == "seed-str":
        text = text.replace("version = 1\n", 'version = 1\nseed = "7"\n', 1)
    elif what == "extra-step":
        text += '\n[[step]]\nname = "ghost"\nmethod = "linear"\nkey = "' + "a" * 64 + '"\n'
    elif what == "dependency":
        text += '\n[[dependency]]\nname = "../x"\nversion = "1.0.0"\nregistry = "r"\nsha256 = "' + "0" * 64 + '"\n'
    lock.write_text(text)


def lock_case(what: str, says: str, at: str = "recipe.lock") -> Case:
    return Case(f"lock-{what}", lambda case: _tamper(case / "recipe.lock", what), at, says, args=(*BUILD, "--locked"))


COMMANDS = [
    Case(
        "locked-and-frozen", lambda case: None, "", "exclude each other", args=(*BUILD, "--locked", "--frozen"), code=2
    ),
    Case("max-memory-words", lambda case: None, "", "--max-memory", args=(*BUILD, "--max-memory", "lots"), code=2),
    Case(
        "max-memory-tiny",
        lambda case: both(recipe("density = 0.5 },", "density = 0.4 },"))(case),
        "",
        "leaves too little",
        args=(*BUILD, "--max-memory", "10MB"),
    ),
    Case("shard-size-zero", lambda case: None, "", "--shard-size", args=(*BUILD, "--shard-size", "0"), code=2),
    Case("device-bogus", lambda case: None, "", "unknown device", args=(*BUILD, "--device", "tpu")),
    Case("recipe-missing", lambda case: None, "nope.toml", "recipe file not found", args=("build", "nope.toml")),
    Case(
        "out-is-a-file",
        write("elsewhere.txt", "keep me"),
        "elsewhere.txt",
        "not written by mergepkg",
        args=("build", "recipe.toml", "--out", "elsewhere.txt", "-q"),
    ),
    Case(
        "out-under-a-file",
        write("elsewhere.txt", "keep me"),
        "elsewhere.txt",
        "is a file, not a folder",
        args=("build", "recipe.toml", "--out", "elsewhere.txt/sub", "-q"),
    ),
    Case(
        "import-too-deep",
        write("c.yml", "merge_method: linear\nmodels: " + "[" * 5000 + "]" * 5000 + "\n"),
        "c.yml",
        "nested too deeply",
        args=("import", "c.yml"),
    ),
    Case("threads-zero", lambda case: None, "", "--threads", args=(*BUILD, "--threads", "0"), code=2),
    Case(
        "serve-port-past-65535",
        lambda case: None,
        "",
        "--port",
        args=("registry", "serve", ".", "--port", "65536"),
        code=2,
    ),
    Case("tune-device-bogus", write("t.toml", ""), "", "unknown device", args=("tune", "t.toml", "--device", "tpu")),
    Case(
        "eval-device-bogus",
        lambda case: None,
        "",
        "unknown device",
        args=("eval", "models/ft1", "-t", "recipe.toml", "--device", "tpu"),
    ),
    Case("seed-words", lambda case: None, "", "--seed", args=(*BUILD, "--seed", "abc"), code=2),
    Case(
        "lock-damaged",
        write("recipe.lock", "version = "),
        "recipe.lock",
        "cannot read the lock",
        args=(*BUILD, "--locked"),
    ),
    lock_case("key", "out of date"),
    lock_case("version", "lock format"),
    lock_case("digest", "the lock records"),
    lock_case("file-sha", "has different content than locked"),
    lock_case("recipe-hash", "the recipe changed"),
    lock_case("no-key", "malformed lock: missing 'key'"),
    lock_case("key-not-hex", "is not a step key"),
    lock_case("size-str", "is not a name, a size and a sha256"),
    lock_case("files-str", "malformed lock"),
    lock_case("extra-step", "was removed"),
    lock_case("seed-str", "seed is not an integer"),
    Case("lock-empty", write("recipe.lock", ""), "recipe.lock", "has no `version`", args=(*BUILD, "--locked")),
    Case(
        "recipe-named-like-a-lock",
        lambda case: shutil.copy(case / "recipe.toml", case / "my.lock"),
        "my.lock",
        "may not end in .lock",
        args=("build", "my.lock"),
    ),
    lock_case("dependency", "malformed lock"),
    Case(
        "lock-not-utf8",
        write("recipe.lock", b"version = \xff\xfe"),
        "recipe.lock",
        "cannot read the lock",
        args=(*BUILD, "--locked"),
    ),
    Case(
        "lock-a-folder",
        both(remove("recipe.lock"), write("recipe.lock/x", "")),
        "recipe.lock",
        "cannot read the lock",
        args=(*BUILD, "--locked"),
    ),
    Case(
        "validate-broken",
        header("ft1", lambda h: None, size=lambda n: n - 4),
        "model.safetensors",
        "truncated",
        args=("validate", "recipe.toml"),
    ),
    Case(
        "plan-broken",
        header("ft2", lambda h: h[EMBED].update(dtype="Q4")),
        "model.safetensors",
        "unknown dtype",
        args=("plan", "recipe.toml"),
    ),
    Case(
        "import-bad-name",
        write("c.yml", "merge_method: linear\nmodels:\n  - model: a/b\n    parameters: {weight: 1}\n"),
        "",
        "invalid package name",
        args=("import", "c.yml", "--name", "../x"),
    ),
    Case(
        "registry-add-ftp", lambda case: None, "", "not reached over ftp://", args=("registry", "add", "x", "ftp://x")
    ),
    Case("cache-info-unknown", lambda case: None, "", "artifacts match key", args=("cache", "info", "ffff")),
]


@pytest.fixture(scope="module")
def template(tmp_path_factory, models) -> Path:
    """A case folder where the good recipe built: models, recipe, lock, out, store."""
    root = tmp_path_factory.mktemp("corpus")
    for name in ("base", "ft1", "ft2"):
        shutil.copytree(models[name], root / "models" / name)
    (root / "recipe.toml").write_text(GOOD)
    env = {"MERGEPKG_HOME": str(root / "home")}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    cwd = os.getcwd()
    try:
        os.chdir(root)
        from mergepkg.cli.app import main

        assert main([*BUILD]) == 0
    finally:
        os.chdir(cwd)
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return root


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under `folder` (but the bookkeeping) and a hash of its bytes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(rel == b or rel.startswith(b) for b in BOOKKEEPING):
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("case", RECIPES + MODELS + COMMANDS, ids=lambda c: c.id)
def test_a_faulty_input_is_one_located_line_and_changes_nothing(case, template, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "case"
    shutil.copytree(template, folder, symlinks=True)
    monkeypatch.setenv("MERGEPKG_HOME", str(folder / "home"))
    monkeypatch.chdir(folder)
    case.change(folder)
    before = snapshot(folder)
    code, _, err = cli(capsys, *case.args)
    lines = err.rstrip("\n").splitlines()
    assert code == case.code, err
    assert "Traceback" not in err and lines, err
    if case.code == 1:
        assert lines[0].startswith("error: ") and case.at in lines[0], err
        assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("  hint: ")), err
    assert case.says in err, err
    assert snapshot(folder) == before, "the command changed files"
    assert not Path("/tmp/mergepkg-corpus-pwned").exists()


# -- registry requests --------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    id: str
    path: str
    status: int
    says: str
    body: dict | bytes | None = None
    token: str | None = "publisher"  # a token's label, or None for no token
    method: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


def _publish(**kw) -> dict:
    return {"recipe": skills(**kw), "lock": None}


REQUESTS = [
    Request("no-token", "/api/v1/publish", 401, "bearer token is required", _publish(), token=None),
    Request("wrong-token", "/api/v1/publish", 403, "not valid", _publish(), token="mpk_forged"),
    Request("expired-token", "/api/v1/publish", 403, "expired", _publish(), token="expired"),
    Request(
        "yank-scope-missing",
        "/api/v1/yank",
        403,
        "may not yank",
        {"name": "skills", "version": "0.1.0", "yanked": True},
    ),
    Request(
        "package-outside-pattern",
        "/api/v1/publish",
        403,
        "may not publish other",
        _publish(name="other"),
        token="skills-only",
    ),
    Request("read-token-publishes", "/api/v1/publish", 403, "may not publish", _publish(), token="reader"),
    Request("malformed-json", "/api/v1/publish", 400, "malformed upload", b"{not json"),
    Request("nested-json", "/api/v1/publish", 400, "malformed upload", b"[" * 100000 + b"]" * 100000),
    Request("not-an-object", "/api/v1/publish", 400, "malformed upload", b"[1, 2]"),
    Request("recipe-missing", "/api/v1/publish", 400, "expected", {"lock": None}),
    Request("recipe-not-toml", "/api/v1/publish", 400, "invalid TOML", {"recipe": "name = ", "lock": None}),
    Request(
        "recipe-bad-name",
        "/api/v1/publish",
        400,
        "invalid package name",
        {"recipe": skills().replace('name = "skills"', 'name = "../../etc"'), "lock": None},
    ),
    Request(
        "recipe-local-source",
        "/api/v1/publish",
        400,
        "only exist on the publisher's machine",
        {"recipe": skills().replace('ft2 = { hf = "tiny/ft2" }', 'ft2 = { path = "/etc" }'), "lock": None},
    ),
    Request(
        "recipe-recipe-source",
        "/api/v1/publish",
        400,
        "",
        {
            "recipe": skills().replace(
                'ft2 = { hf = "tiny/ft2" }', 'ft2 = { recipe = "../../../etc/x.toml", step = "s" }'
            ),
            "lock": None,
        },
    ),
    Request(
        "recipe-cycle",
        "/api/v1/publish",
        400,
        "cycle",
        {
            "recipe": skills()
            + textwrap.dedent("""
        [steps.a]
        method = "linear"
        inputs = [{ model = "b", weight = 1 }]
        [steps.b]
        method = "linear"
        inputs = [{ model = "a", weight = 1 }]
        """),
            "lock": None,
        },
    ),
    Request("lock-not-toml", "/api/v1/publish", 400, "cannot read the lock", {"recipe": skills(), "lock": "x = "}),
    Request("too-large", "/api/v1/publish", 413, "limit", b"x" * (MAX_BODY + 1)),
    Request(
        "yank-unknown-version",
        "/api/v1/yank",
        404,
        "not published",
        {"name": "skills", "version": "9.9.9"},
        token="admin",
    ),
    Request(
        "yank-bad-name",
        "/api/v1/yank",
        400,
        "invalid package name",
        {"name": "../x", "version": "0.1.0"},
        token="admin",
    ),
    Request(
        "yank-nul",
        "/api/v1/yank",
        400,
        "invalid package name",
        {"name": "sk\x00ills", "version": "0.1.0"},
        token="admin",
    ),
    Request("yank-bad-version", "/api/v1/yank", 400, "version", {"name": "skills", "version": "one"}, token="admin"),
    Request("unknown-action", "/api/v1/delete", 404, "no action", {}),
    Request("get-on-api", "/api/v1/publish", 405, "use POST", None, method="GET"),
    Request("traversal", "/../config.json", 404, "not found", None, method="GET"),
    Request("private-folder", "/.mergepkg/tokens.json", 404, "not found", None, method="GET"),
    Request("encoded-traversal", "/%2e%2e/%2e%2e/etc/passwd", 404, "not found", None, method="GET"),
    Request("republish-other-content", "/api/v1/publish", 409, "other content", _publish(weight=0.9), token="admin"),
]


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A served registry with `skills` 0.1.0 published and tokens of several kinds."""
    from datetime import datetime, timedelta, timezone

    from mergepkg.recipe.parse import parse_recipe
    from mergepkg.registry import tokens
    from mergepkg.registry.folder import RegistryFolder

    root = tmp_path_factory.mktemp("registry") / "served"
    new_registry(root, "team")
    RegistryFolder(root).publish(parse_recipe(skills(), "/upload/skills.toml"), skills().encode())
    minted = {
        "publisher": tokens.create(root, "publisher", scopes=["publish"]),
        "admin": tokens.create(root, "admin"),
        "reader": tokens.create(root, "reader", scopes=["read"]),
        "skills-only": tokens.create(root, "skills-only", packages=["skills"]),
        "expired": tokens.create(root, "expired", expires=datetime.now(timezone.utc) + timedelta(seconds=1)),
    }
    import time

    time.sleep(1.1)  # the last token expires
    with serving(root) as url:
        yield url, root, minted


@pytest.mark.parametrize("req", REQUESTS, ids=lambda r: r.id)
def test_a_faulty_registry_request_is_refused_and_changes_nothing(req, registry):
    url, root, minted = registry
    before = snapshot(root)
    data = json.dumps(req.body).encode() if isinstance(req.body, dict) else req.body
    headers = dict(req.headers)
    if req.token:
        headers["Authorization"] = f"Bearer {minted.get(req.token, req.token)}"
    request = urllib.request.Request(url + req.path, data=data, method=req.method or "POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            status, body = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, body = e.code, e.read()
    assert status == req.status, body
    text = body.decode()
    assert text.count("\n") == 1 and req.says in json.loads(text)["error"], text
    assert str(root) not in text and os.getcwd() not in text and "/tmp/" not in text, text
    assert snapshot(root) == before

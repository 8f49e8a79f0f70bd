"""Model cards: the README.md every output folder gets.

Hugging Face front matter made and checked by huggingface_hub's `ModelCardData` (tests
read every card back with `ModelCard.load`): `base_model` lists the Hugging Face repos
the output is merged from (a local folder has no repo id and is not listed; no hub
source, no `base_model`), `base_model_relation: merge`, `library_name: transformers`,
the tags `merge`, `mergepkg`, `moe` for a mixture of experts, and the recipe's own (each
once). Then what the output is made of: the recipe step (and the steps it reads) as
written, every source pinned as the lock pins it, each method's one-line description and
paper, the key and output digest, how to rebuild it from the folder itself
(`mergepkg.toml`, `mergepkg.lock`, where the sources come from; the mergekit config when
there is one), and evaluation results when there are any.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import yaml

from mergepkg._version import __version__
from mergepkg.builder.bundle import IMPORTS, LOCK_FILE, RECIPE_FILE
from mergepkg.builder.mergekit_yaml import MERGEKIT_FILE
from mergepkg.lockfile import LockedExport
from mergepkg.methods import METHODS
from mergepkg.methods.lora import SPEC as LORA_SPEC
from mergepkg.methods.spec import MethodSpec
from mergepkg.recipe.exports import export_file
from mergepkg.recipe.model import Recipe, Step
from mergepkg.resolve.exports import card_bases, card_tags
from mergepkg.resolve.resolution import Resolution


def step_text(recipe_text: str, name: str) -> str:
    """The TOML of `[steps.NAME]` (and its sub-tables) as written in the recipe."""
    lines, out, inside = recipe_text.splitlines(), [], False
    header = re.compile(r"^\s*\[\[?\s*steps\.(\"?)" + re.escape(name) + r"\1\s*(\]|\.)")
    for line in lines:
        if re.match(r"^\s*\[", line):
            inside = bool(header.match(line))
        if inside:
            out.append(line)
    return "\n".join(out).strip()


def method_of(step: Step) -> MethodSpec:
    """A step's method; an implicit `base+adapter` step's is the LoRA application."""
    return LORA_SPEC if step.adapter is not None else METHODS[step.method]


def front_matter(res: Resolution, name: str) -> str:
    """The card's metadata as YAML, through huggingface_hub's `ModelCardData`, and read back
    as `ModelCard` reads a README's front matter (which checks it). `repocard_data` rather
    than `ModelCard` itself, whose module loads the Hub client (0.3 s on every placement,
    no-op builds included)."""
    from huggingface_hub.repocard_data import ModelCardData  # only when an output is placed

    data = ModelCardData(
        base_model=card_bases(res.recipe, res.plan, name) or None,
        library_name="transformers",
        tags=card_tags(res.recipe, name),
        base_model_relation="merge",
    )
    text = data.to_yaml()
    ModelCardData(**yaml.safe_load(text))  # raises on metadata huggingface_hub would refuse
    return text


def render_card(
    res: Resolution,
    name: str,
    digest: str,
    evals: list[dict] | None = None,
    *,
    local: Mapping[str, str] | None = None,
    files: tuple[str, ...] = (RECIPE_FILE,),
    mergekit: bool = False,
    exports: Mapping[str, LockedExport] | None = None,
) -> str:
    """`res` is the Resolution the output was built from; `evals` rows of `mergepkg eval`;
    `local`: each local source's folder as the rebuild expects it, relative to
    `mergepkg.toml` (builder/bundle.py); `files`: the recipe files in the folder;
    `mergekit`: whether the folder has a mergekit config; `exports`: the lock's exports
    (those of this step are listed)."""
    recipe: Recipe = res.recipe
    local = dict(local or {})
    ancestors = res.plan.upstream(name)
    upstream = [n for n in res.plan.order if n in ancestors]
    used = [s for s in res.sources if s in ancestors]
    step = recipe.steps[name]
    method = method_of(step)
    body = [
        f"# {recipe.name} / {name}",
        "",
        f"A merge built by mergepkg {__version__} from step `{name}` of "
        f"`{recipe.path.name}` (package {recipe.name} {recipe.version}).",
        "",
        "## Method",
        "",
    ]
    for n in [*upstream, name]:
        spec = method_of(recipe.steps[n])
        paper = f" ([paper]({spec.paper}))" if spec.paper else ""
        body.append(f"- `{n}`: **{spec.name}**, {spec.summary[0].lower() + spec.summary[1:]}{paper}")
    body += ["", "## Recipe", "", "```toml"]
    for n in [*upstream, name]:
        if (adapter := recipe.steps[n].adapter) is not None:  # implicit: written where it is used
            body += [f'# "{n}": the LoRA adapter {adapter} applied to {recipe.steps[n].base}', ""]
            continue
        written = recipe.written(n)
        body.append(step_text(written.text, written.name))
        body.append("")
    body[-1] = "```"
    body += ["", "## Sources, pinned", "", "| name | source | revision | commit | files |", "|---|---|---|---|---|"]
    for s in used:
        src, pin = recipe.sources[s], res.sources[s].locked.pin
        where = src.hf or local.get(s) or res.sources[s].locked.path
        body.append(
            f"| {s} | {where} | {src.revision if src.hf else '-'} | {pin.commit or '-'} | "
            f"{len(pin.files)} ({pin.ref[:19]}) |"
        )
    body += [
        "",
        "## Build",
        "",
        f"- key: `{res.keys[name]}`",
        f"- output digest: `{digest}`",
        f"- method: {method.name} v{method.version}; compute dtype {step.dtype}"
        + (f", saved as {step.out_dtype}" if step.out_dtype else ""),
        "",
        *rebuild_text(res, local, files, mergekit),
    ]
    if gguf := [e for e in (exports or {}).values() if e.step == name and e.digest]:
        body += ["", "## GGUF", "", "| file | type | sha256 |", "|---|---|---|"]
        body += [f"| `{export_file(e.name)}` | {e.type} | `{(e.digest or '')[7:]}` |" for e in gguf]
        body += [
            "",
            f"Made from this step by llama.cpp's converter ({gguf[0].converter.split(' sha256:')[0]}); "
            f"`mergepkg export {RECIPE_FILE}` makes them again.",
        ]
    if evals:
        body += ["", "## Evaluation", "", "| task | metric | value |", "|---|---|---|"]
        for row in evals:
            body.append(f"| {row['task']} | {row['metric']} | {row['value']:.4g} |")
    return f"---\n{front_matter(res, name)}\n---\n\n" + "\n".join(body) + "\n"  # as ModelCard writes it


def rebuild_text(res: Resolution, local: Mapping[str, str], files: tuple[str, ...], mergekit: bool) -> list[str]:
    """The card's "Rebuild" section: the command, run in the output folder, and where its sources come from."""
    imports = [f for f in files if f != RECIPE_FILE]
    holds = f"the recipe (`{RECIPE_FILE}`"
    if imports:
        where = f" under `{IMPORTS}/`" if all(f.startswith(f"{IMPORTS}/") for f in imports) else ""
        holds += f", and the recipe files it imports{where}: " + ", ".join(f"`{f}`" for f in imports)
    hub = sorted({s.locked.hf for s in res.sources.values() if s.locked.hf})
    lines = [
        "## Rebuild",
        "",
        f"This folder holds {holds}) and its lock (`{LOCK_FILE}`). In this folder,",
        "",
        "```",
        f"mergepkg build {RECIPE_FILE} --locked",
        "```",
        "",
        "rebuilds these tensors and checks them against the digests the lock records.",
    ]
    if hub:
        lines.append("Hugging Face sources are fetched at the commits the lock pins: " + ", ".join(hub) + ".")
    if res.dependencies:
        lines.append(
            "Registry dependencies are installed at the versions the lock records: "
            + ", ".join(f"{d.name} {d.version}" for d in res.dependencies.values())
            + "."
        )
    if local:
        lines += [
            f"Local model folders are not part of this folder: provide each at its path relative to "
            f"`{RECIPE_FILE}`, with the files the lock pins (sizes and sha256).",
            "",
            "| source | folder |",
            "|---|---|",
            *(f"| {n} | `{p}` |" for n, p in local.items()),
        ]
    if mergekit:
        lines += [
            "",
            f"`{MERGEKIT_FILE}` is the same merge as a mergekit config: "
            f"`mergekit-yaml {MERGEKIT_FILE} OUTPUT_FOLDER`, run in this folder.",
        ]
    return lines

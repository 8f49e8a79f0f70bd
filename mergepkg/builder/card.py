"""Model cards: the README.md every output folder gets.

Hugging Face front matter (`base_model`, `base_model_relation: merge`, tags), then
what the output is made of: the recipe step (and the steps it reads), every source
pinned as the lock pins it, each method's one-line description and paper, the key and
output digest, and evaluation results when there are any.
"""

from __future__ import annotations

import re

import networkx as nx

from mergepkg._version import __version__
from mergepkg.methods import METHODS
from mergepkg.recipe.model import Recipe
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


def render_card(res: Resolution, name: str, digest: str, evals: list[dict] | None = None) -> str:
    """`res` is the Resolution the output was built from; `evals` rows of `mergepkg eval`."""
    recipe: Recipe = res.recipe
    upstream = [n for n in res.plan.order if n in nx.ancestors(res.plan.graph, name)]
    used = [s for s in res.sources if s in nx.ancestors(res.plan.graph, name)]
    hub = [res.recipe.sources[s].hf for s in used if res.recipe.sources[s].hf]
    bases = hub or used
    front = [
        "---",
        "base_model:",
        *[f"- {b}" for b in dict.fromkeys(bases)],
        "base_model_relation: merge",
        "library_name: transformers",
        "tags:",
        "- mergepkg",
        "- merge",
        "---",
        "",
    ]
    step = recipe.steps[name]
    method = METHODS[step.method]
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
        spec = METHODS[recipe.steps[n].method]
        paper = f" ([paper]({spec.paper}))" if spec.paper else ""
        body.append(f"- `{n}`: **{spec.name}**, {spec.summary[0].lower() + spec.summary[1:]}{paper}")
    body += ["", "## Recipe", "", "```toml"]
    for n in [*upstream, name]:
        written = recipe.written(n)
        body.append(step_text(written.text, written.name))
        body.append("")
    body[-1] = "```"
    body += ["", "## Sources, pinned", "", "| name | source | revision | commit | files |", "|---|---|---|---|---|"]
    for s in used:
        src, pin = recipe.sources[s], res.sources[s].locked.pin
        where = src.hf or res.sources[s].locked.path
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
        "Rebuild the same bytes: `mergepkg build " + recipe.path.name + " --locked`.",
    ]
    if evals:
        body += ["", "## Evaluation", "", "| task | metric | value |", "|---|---|---|"]
        for row in evals:
            body.append(f"| {row['task']} | {row['metric']} | {row['value']:.4g} |")
    return "\n".join(front + body) + "\n"

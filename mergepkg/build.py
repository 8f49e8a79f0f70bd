"""Resolve a recipe (fetch sources, lay out every step) and build it.

`resolve` touches no tensor data: it reads configs and safetensors headers, so
`mergepkg validate` runs it to find every error a build would meet. `build` runs
the engine for each step in plan order inside one temporary folder next to the
output and moves the outputs into place only when all steps succeeded: a failed or
interrupted build leaves the output folder as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from mergepkg.engine import Reporter, build_step, check_device
from mergepkg.errors import BuildError, MergepkgError, SourceError
from mergepkg.layout import ModelInfo, StepLayout, step_layout
from mergepkg.plan import Plan, make_plan
from mergepkg.recipe import Recipe
from mergepkg.settings import Settings
from mergepkg.sources import fetch
from mergepkg.tensors import scan_tensors

MARKER = ".mergepkg-output"  # marks a folder mergepkg wrote, so a rebuild may replace it


@dataclass
class Resolved:
    plan: Plan
    folders: dict[str, Path] = field(default_factory=dict)  # sources now, steps once built
    infos: dict[str, ModelInfo] = field(default_factory=dict)
    layouts: dict[str, StepLayout] = field(default_factory=dict)


def read_model_info(folder: Path) -> ModelInfo:
    try:
        config = json.loads((folder / "config.json").read_text())
    except FileNotFoundError:
        raise SourceError("model folder has no config.json", file=folder) from None
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read config.json: {e}", file=folder) from None
    return ModelInfo(config, scan_tensors(folder))


def resolve(recipe: Recipe, settings: Settings, targets: tuple[str, ...] | None = None) -> Resolved:
    resolved = Resolved(make_plan(recipe, targets))
    for name in resolved.plan.sources_used():
        source = recipe.sources[name]
        try:
            folder = fetch(source, settings).folder
            resolved.infos[name] = read_model_info(folder)
        except SourceError as e:
            key = f"sources.{name}"
            e.file, e.line, e.key = str(recipe.path), recipe.line_of(key), key
            raise
        resolved.folders[name] = folder
    for name in resolved.plan.order:
        layout = step_layout(recipe, recipe.steps[name], resolved.infos)
        resolved.layouts[name] = layout
        resolved.infos[name] = layout.info
    return resolved


def build(recipe: Recipe, out: Path, settings: Settings, *, seed: int | None = None,
          reporter: Reporter | None = None) -> dict[str, Path]:
    """Build the recipe's outputs into `out` (one output: `out` is the model folder;
    several: `out/<step>`). Returns output step name -> folder."""
    check_device(settings.device)
    if settings.threads:
        from mergepkg._lazy import torch

        torch.set_num_threads(settings.threads)
    out = out.resolve()
    _check_replaceable(out)
    resolved = resolve(recipe, settings)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".mergepkg-build-", dir=out.parent))
    try:
        for name in resolved.plan.order:
            folder = work / "steps" / name
            folder.mkdir(parents=True)
            try:
                build_step(resolved.layouts[name], resolved.folders,
                           {m: info.tensors for m, info in resolved.infos.items()}, folder,
                           seed=recipe.seed if seed is None else seed, device=settings.device,
                           max_shard_bytes=settings.max_shard_bytes, reporter=reporter)
            except MergepkgError as e:
                if e.key is None:  # locate engine errors at the step that failed
                    e.file, e.key, e.line = str(recipe.path), f"steps.{name}", recipe.line_of(f"steps.{name}")
                raise
            resolved.folders[name] = folder
            resolved.infos[name] = read_model_info(folder)  # real file names for readers downstream
        staged = _stage_outputs(recipe, resolved, work)
        _swap_into_place(staged, out, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if len(recipe.outputs) == 1:
        return {recipe.outputs[0]: out}
    return {name: out / name for name in recipe.outputs}


def _stage_outputs(recipe: Recipe, resolved: Resolved, work: Path) -> Path:
    if len(recipe.outputs) == 1:
        staged = resolved.folders[recipe.outputs[0]]
    else:
        staged = work / "outputs"
        staged.mkdir()
        for name in recipe.outputs:
            os.rename(resolved.folders[name], staged / name)
    (staged / MARKER).write_text(json.dumps({"recipe": str(recipe.path), "outputs": list(recipe.outputs)}) + "\n")
    return staged


def _check_replaceable(out: Path) -> None:
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).exists())):
        raise BuildError(f"{out} exists and was not written by mergepkg; refusing to replace it",
                         hint="choose another --out, or remove the folder")


def _swap_into_place(staged: Path, out: Path, work: Path) -> None:
    """Replace `out` with `staged` by renames only: `out` is either old or new, never half."""
    if out.exists():
        os.rename(out, work / "previous")
    os.rename(staged, out)

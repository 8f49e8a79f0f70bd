"""Pitfalls a step's layout shows (MP2xx): what its models' configs and tensor headers
say, with the parameters the layout resolved for each output tensor. No tensor data is
read: `validate` checks every step, and `build` every step it lays out, before the
first byte is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from mergepkg.layout.types import ModelInfo, StepLayout, architecture
from mergepkg.pitfalls.pitfall import Pitfall, model_at, written_name

# MP201: a random density whose expected kept entries of a tensor (density x entries) are
# fewer than this leaves that tensor's task vector to chance: a handful of entries,
# rescaled by 1/density, stand for all of them (their relative spread is about 1/sqrt(kept))
MIN_KEPT = 5.0


def layout_pitfalls(layout: StepLayout, infos: Mapping[str, ModelInfo]) -> list[Pitfall]:
    """What MP201 and MP202 find in one step's layout; `infos`: what is known of its models."""
    step = layout.step
    if step.moe is not None or step.adapter is not None:  # no merge of inputs: experts, an adapter
        return []
    return _architectures(layout, infos) + _kept(layout)


def _architectures(layout: StepLayout, infos: Mapping[str, ModelInfo]) -> list[Pitfall]:
    """MP202: models of different architectures whose tensors matched (else the layout fails)."""
    step = layout.step
    ref = step.base or step.models[0]
    want = architecture(infos[ref].config)
    found = []
    for model in step.models:
        got = architecture(infos[model].config)
        if got != want:
            name, against = written_name(step, model), written_name(step, ref)
            found.append(
                Pitfall(
                    "MP202",
                    f"{name!r} is {_arch(got)} but {against!r} is {_arch(want)}: their tensors match, so they "
                    f"merge and the output is loaded as {_arch(architecture(layout.config))}",
                    "merge models of one architecture (fine-tunes of one base); if these share their weights' "
                    "meaning (a renamed class, a variant), allow MP202 in [package] allow",
                    step=step.name,
                    at=model_at(step, model),
                )
            )
    return found


def _kept(layout: StepLayout) -> list[Pitfall]:
    """MP201: per input, the tensors where its random density keeps under MIN_KEPT entries."""
    step = layout.step
    if not layout.method.random or layout.method.param("density") is None:
        return []
    sparse: dict[str, list[tuple[float, float, int, str]]] = {}  # model -> (kept, density, entries, tensor)
    for out in layout.tensors:
        entries = math.prod(out.info.shape)
        for part, density in zip(out.inputs, out.params.get("density", ())):
            kept = density * entries
            if kept < MIN_KEPT:
                sparse.setdefault(part.model, []).append((kept, density, entries, out.name))
    found = []
    for model, tensors in sparse.items():
        kept, density, entries, name = min(tensors)
        shown = written_name(step, model)
        more = f", and {len(tensors) - 1} more tensor{'s' if len(tensors) > 2 else ''} under {MIN_KEPT:g}"
        found.append(
            Pitfall(
                "MP201",
                f"density {density:g} keeps on average {kept:.2g} of the {entries} entries of {name}"
                f"{more if len(tensors) > 1 else ''}: what survives, scaled by 1/density, is chance",
                f"raise the density of {shown!r} for small tensors (a filter condition), or use a method that "
                "keeps the largest entries (ties, breadcrumbs), which always keeps at least one",
                step=step.name,
                at=model_at(step, model),
            )
        )
    return found


def _arch(value) -> str:
    """An architecture as a config names it: a list of class names, or a model type."""
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "unnamed"
    return str(value) if value else "unnamed"

"""The `[steps.NAME]` table of an `moe` step -> `Step` with `moe` set.

Checked here, from the recipe alone (located errors with hints): the keys, the base,
every expert's model and prompts, `experts_per_token` against the number of experts,
identical prompt sets in the prompt-based gate modes. An expert that is the base
without `allow_base_expert = true` needs the models' identities (the base may be there
under another name): `resolve/keys.py` checks it at resolution. What needs the models'
files (architectures, shapes, the output family) is checked by `layout/moe.py`.
"""

from __future__ import annotations

from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.methods.moe import GATE_MODES, PROMPTED, SPEC
from mergepkg.recipe.chat import chat_template_setting
from mergepkg.recipe.locate import key_name
from mergepkg.recipe.model import Expert, MoE, Step
from mergepkg.recipe.tables import TableReader

STEP_KEYS = ("method", "base", "experts", "shared_expert", "params", "dtype", "out_dtype", "chat_template")
EXPERT_KEYS = ("model", "prompts", "negative_prompts", "allow_base_expert")


def moe_step(p: TableReader, name: str, table: dict) -> Step:
    """`p` reads the recipe (located errors, reference checks)."""
    key = f"steps.{key_name(name)}"
    for k, hint in (
        ("inputs", "an moe step lists its models under `experts`"),
        ("slices", "an moe step lists its models under `experts`"),
        ("tokenizer", "an moe step's output gets its base's tokenizer; remove `tokenizer`"),
    ):
        if k in table:
            raise p.error(f"{key}.{k}", f"method 'moe' takes no `{k}`", hint)
    p.only_keys(table, STEP_KEYS, key)
    if "base" not in table:
        raise p.error(
            key,
            "method 'moe' needs a base model",
            'add base = "<source or step>": attention, norms and embeddings come from it',
        )
    base = p.model_ref(table["base"], f"{key}.base")
    if base == name:
        raise p.error(f"{key}.base", f"step {name!r} cannot take itself as base")

    params = p.expect(table.get("params", {}), dict, f"{key}.params", "a table")
    for k, value in params.items():
        param = SPEC.param(k)
        if param is None:
            raise p.error(
                f"{key}.params.{k}",
                f"method 'moe' has no parameter {k!r}",
                did_you_mean(k, [q.name for q in SPEC.params]),
            )
        if (problem := param.problem(value)) is not None:
            close = did_you_mean(str(value), GATE_MODES) if k == "gate_mode" else None
            raise p.error(f"{key}.params.{k}", problem, close)
    gate_mode = params.get("gate_mode", "hidden")
    per_token = params.get("experts_per_token", 2)

    raw = p.expect(
        table.get("experts"),
        list,
        f"{key}.experts",
        'a list of experts, e.g. [{ model = "math", prompts = ["solve"] }, ...]',
    )
    if not raw:
        raise p.error(f"{key}.experts", "expected at least one expert")
    experts = tuple(_expert(p, v, name, f"{key}.experts[{i}]", base, gate_mode) for i, v in enumerate(raw))
    if len(experts) < per_token:
        where = f"{key}.params.experts_per_token" if "experts_per_token" in params else f"{key}.experts"
        raise p.error(
            where,
            f"experts_per_token is {per_token} but the step has {len(experts)} expert(s)",
            f"list at least {per_token} experts, or set params.experts_per_token = {len(experts)}",
        )
    if gate_mode in PROMPTED and len(experts) > 1:
        # all alike: no expert is ever preferred (mergekit-moe refuses it too); two alike
        # among others is warning MP105 (pitfalls/params.py)
        prompts = {(tuple(sorted(e.prompts)), tuple(sorted(e.negative_prompts))) for e in experts}
        if len(prompts) == 1:
            raise p.error(
                f"{key}.experts[{len(experts) - 1}].prompts",
                "every expert has the same prompts: their router rows would be equal and no expert "
                "would ever be preferred",
                "give each expert prompts for what should be routed to it",
            )
    shared = None
    if "shared_expert" in table:
        shared = _expert(p, table["shared_expert"], name, f"{key}.shared_expert", base, gate_mode, shared=True)

    dtype = p.dtype(table.get("dtype", "float32"), f"{key}.dtype")
    out_dtype = p.dtype(table["out_dtype"], f"{key}.out_dtype") if "out_dtype" in table else None
    moe = MoE(experts=experts, experts_per_token=per_token, gate_mode=gate_mode, shared_expert=shared)
    models = (base, *moe.models)
    chat_template = chat_template_setting(p, table.get("chat_template"), f"{key}.chat_template", models)
    return Step(
        name=name,
        method=SPEC.name,
        base=base,
        dtype=dtype,
        out_dtype=out_dtype,
        moe=moe,
        chat_template=chat_template,
    )


def _expert(
    p: TableReader, value: Any, step: str, key: str, base: str, gate_mode: str, *, shared: bool = False
) -> Expert:
    what = '{ model = "<name>", prompts = ["..."] }'
    if isinstance(value, str):
        value = {"model": value}
    p.expect(value, dict, key, what + " or a model name")
    allowed = EXPERT_KEYS if not shared else EXPERT_KEYS[:-1]
    p.only_keys(value, allowed, key)
    if "model" not in value:
        raise p.error(key, "missing `model`", "e.g. " + what)
    model = p.model_ref(value["model"], f"{key}.model")
    if model == step:
        raise p.error(f"{key}.model", f"step {step!r} cannot take itself as an expert")
    prompts = _prompts(p, value.get("prompts", []), f"{key}.prompts")
    negative = _prompts(p, value.get("negative_prompts", []), f"{key}.negative_prompts")
    if gate_mode in PROMPTED and not prompts:
        raise p.error(
            key,
            f"gate_mode {gate_mode!r} needs prompts for every expert",
            'add prompts = ["..."]: examples of what should be routed to this expert '
            '(or set params.gate_mode = "random")',
        )
    allow = value.get("allow_base_expert", False)
    if not isinstance(allow, bool):
        raise p.error(f"{key}.allow_base_expert", f"expected true or false, got {allow!r}")
    # whether the expert is the base (by name, or the same model under another name) is
    # checked when models have identities: resolve/keys.py check_experts
    return Expert(model=model, prompts=prompts, negative_prompts=negative, allow_base_expert=allow)


def _prompts(p: TableReader, value: Any, key: str) -> tuple[str, ...]:
    p.expect(value, list, key, "a list of prompt strings")
    for i, s in enumerate(value):
        if not isinstance(s, str) or not s:
            raise p.error(f"{key}[{i}]", f"expected a non-empty string, got {s!r}")
    return tuple(value)

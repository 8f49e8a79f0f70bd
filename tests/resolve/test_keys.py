"""Step keys: what changes them and what does not."""

from __future__ import annotations

from mergepkg.canonical import canonical_json
from mergepkg.methods import METHODS
from mergepkg.recipe.model import Condition
from mergepkg.recipe.parse import load_recipe
from mergepkg.resolve.keys import HASH_VERSION, effective
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

TWO_STEPS = """
[steps.skills]
method = "ties"
base = "base"
inputs = [
  { model = "ft1", weight = 1.0, density = 0.5 },
  { model = "ft2", weight = 1.0, density = 0.5 },
]

[steps.final]
method = "slerp"
base = "base"
inputs = ["skills"]
params = { t = 0.3 }
"""


def keys(recipe_file, body, name="recipe.toml"):
    res = resolve(load_recipe(recipe_file(body, name=name)), Session())
    return {n: res.keys[n] for n in res.plan.order}


def test_keys_ignore_names_comments_order_and_defaults(recipe_file):
    k = keys(recipe_file, TWO_STEPS)
    commented = TWO_STEPS.replace('method = "ties"', 'method = "ties"  # trim and elect')
    reordered = TWO_STEPS.replace('method = "ties"\nbase = "base"', 'base = "base"\nmethod = "ties"')
    defaults = TWO_STEPS.replace('inputs = ["skills"]', 'inputs = ["skills"]\ndtype = "float32"').replace(
        "density = 0.5 },\n]", "density = 0.5 },\n]\nparams = { normalize = true, lambda = 1.0 }"
    )
    spelled = TWO_STEPS.replace("weight = 1.0", "weight = 1")
    for variant in (commented, reordered, defaults, spelled):
        assert keys(recipe_file, variant) == k
    renamed = TWO_STEPS.replace("[steps.skills]", "[steps.abilities]").replace('["skills"]', '["abilities"]')
    k2 = keys(recipe_file, renamed)
    assert k2["abilities"] == k["skills"] and k2["final"] == k["final"]


def test_any_number_changes_the_key_and_everything_downstream(recipe_file):
    k = keys(recipe_file, TWO_STEPS)
    upstream = keys(
        recipe_file, TWO_STEPS.replace('density = 0.5 },\n  { model = "ft2"', 'density = 0.51 },\n  { model = "ft2"')
    )
    assert upstream["skills"] != k["skills"] and upstream["final"] != k["final"]
    downstream = keys(recipe_file, TWO_STEPS.replace("t = 0.3", "t = 0.4"))
    assert downstream["skills"] == k["skills"] and downstream["final"] != k["final"]
    dtype = keys(recipe_file, TWO_STEPS + 'out_dtype = "bfloat16"\n')
    assert dtype["final"] != k["final"] and dtype["skills"] == k["skills"]


def test_source_content_not_path_is_the_identity(recipe_file, stub_models, tmp_path):
    import shutil

    k = keys(recipe_file, TWO_STEPS)
    copy = tmp_path / "copy_of_ft1"
    shutil.copytree(stub_models["ft1"], copy)
    body = TWO_STEPS.replace('model = "ft1"', 'model = "moved"')
    path = recipe_file(body, name="moved.toml")
    path.write_text(path.read_text().replace("[sources]\n", f'[sources]\nmoved = {{ path = "{copy}" }}\n'))
    res = resolve(load_recipe(path), Session())
    assert res.keys["skills"] == k["skills"]
    (copy / "config.json").write_text((copy / "config.json").read_text() + "\n")
    assert resolve(load_recipe(path), Session()).keys["skills"] != k["skills"]


def test_seed_only_keys_random_methods(recipe_file):
    body = TWO_STEPS.replace('method = "ties"', 'method = "dare_ties"')
    a = keys(recipe_file, body)
    seeded = resolve(load_recipe(recipe_file(body, name="c.toml")), Session(), seed=5).keys
    assert seeded["skills"] != a["skills"]  # dare draws from the seed
    plain = resolve(load_recipe(recipe_file(TWO_STEPS, name="d.toml")), Session(), seed=5).keys
    assert plain["skills"] == keys(recipe_file, TWO_STEPS)["skills"]  # ties does not


def test_effective_settings_normalise_scopes():
    density = METHODS["ties"].param("density")
    assert effective(density, [{}, {}]) == 1.0  # default
    assert effective(density, [{"density": 1.0}, {}]) == 1.0
    assert effective(density, [{}, {"density": 0.5}]) == 0.5
    conds = (Condition("mlp", 0.3),)
    assert effective(density, [{"density": conds}, {"density": 0.5}]) == [
        {"filter": "mlp", "value": 0.3},
        {"filter": None, "value": 0.5},
    ]
    assert effective(density, [{"density": (Condition(None, 0.2),)}, {"density": 0.5}]) == 0.2
    assert effective(density, [{"density": (0.1, 0.9)}]) == [0.1, 0.9]


def test_hash_version_and_engine_are_in_every_entry(recipe_file):
    res = resolve(load_recipe(recipe_file(TWO_STEPS)), Session())
    entry = res.entries["skills"]
    assert entry["hash_version"] == HASH_VERSION and "engine" in entry
    assert entry["method_version"] == METHODS["ties"].version == 3  # 2: tie-breaking; 3: NaN in the top k
    assert "skills" not in canonical_json(entry).decode()  # names never enter a key


def test_only_steps_whose_config_changed_carry_the_config_version(recipe_file):
    """Stacked layers' per-layer settings and dtype "auto"'s named dtype (version 2), then
    stacked layers' head and special ids whose token another tokenizer lacks (version 3),
    changed what those steps write, and stacked layers' GPT-2 and GPT-NeoX embeddings and
    head (version 4): their keys changed, no other step's did."""

    body = (
        TWO_STEPS
        + """
[steps.stack]
method = "passthrough"
slices = [{ sources = [{ model = "ft1", layers = [0, 2] }] }, { sources = [{ model = "ft2", layers = [2, 4] }] }]

[steps.auto]
method = "linear"
dtype = "auto"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]

[steps.auto_saved]
method = "linear"
dtype = "auto"
out_dtype = "bfloat16"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]

[steps.other_tokenizer]
method = "linear"
tokenizer = "ft2"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]

[steps.first_tokenizer]
method = "linear"
tokenizer = "ft1"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
"""
    )
    entries = resolve(load_recipe(recipe_file(body)), Session()).entries
    assert entries["stack"]["config"] == 4 and entries["other_tokenizer"]["config"] == 3
    assert entries["auto"]["config"] == 2
    unchanged = {"skills", "final", "auto_saved", "first_tokenizer"}
    assert not unchanged & {name for name, e in entries.items() if "config" in e}

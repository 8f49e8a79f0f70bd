"""Steps of other recipe files as sources: one DAG, same keys, errors in the right file."""

from __future__ import annotations

import pytest
from helpers import build_recipe

from mergepkg.errors import PlanError, RecipeError
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.parse import load_recipe
from mergepkg.registry.dependencies import Dependencies
from mergepkg.resolve.resolution import resolve
from mergepkg.store.session import Session

OTHER = """
[steps.soup]
method = "linear"
inputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]
"""


def test_imported_step_is_one_dag_with_the_same_key(write_recipe, tmp_path):
    other = write_recipe(OTHER, name="other.toml")
    main = write_recipe(
        '[steps.top]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "shared", weight = 0.5 }]\n',
        name="main.toml",
    )
    main.write_text(
        main.read_text().replace("[sources]\n", '[sources]\nshared = { recipe = "other.toml", step = "soup" }\n')
    )
    alone = resolve(load_recipe(other), Session())
    res = resolve(load_recipe(main), Session())
    assert res.plan.order == ("shared::soup", "top")
    assert res.keys["shared::soup"] == alone.keys["soup"]
    build_recipe(other, tmp_path / "o1")
    report = build_recipe(main, tmp_path / "o2")
    assert report.reused == ["shared::soup"] and report.built == ["top"]


def test_unknown_imported_step_is_located_with_did_you_mean(write_recipe):
    write_recipe(OTHER, name="other.toml")
    main = write_recipe('[steps.top]\nmethod = "passthrough"\ninputs = ["shared"]\n', name="main.toml")
    main.write_text(
        main.read_text().replace("[sources]\n", '[sources]\nshared = { recipe = "other.toml", step = "sop" }\n')
    )
    with pytest.raises(PlanError) as info:
        resolve(load_recipe(main), Session())
    e = info.value
    assert e.key == "sources.shared.step" and e.line == 6 and e.hint == "did you mean 'soup'?"


def test_a_dependency_without_the_step_is_named_by_package_and_version(tmp_path):
    """A dependency's recipe is installed as `<version>+<sha256>.toml`: a cache detail the
    error named instead of the package (`0.1.0+6098fac6d339.toml has no step 'nope'`)."""
    installed = tmp_path / "packages/my-pkg/0.1.0+6098fac6d339.toml"
    installed.parent.mkdir(parents=True)
    installed.write_text(
        '[package]\nname = "my_pkg"\nversion = "0.1.0"\n[sources]\nft1 = { hf = "tiny/ft1" }\n'
        'ft2 = { hf = "tiny/ft2" }\n' + OTHER
    )
    main = tmp_path / "usem.toml"
    main.write_text(
        '[package]\nname = "usem"\nversion = "0.1.0"\n[dependencies]\nmy_pkg = "^0.1"\n'
        '[sources]\na = { dependency = "my_pkg", step = "nope" }\n'
        '[steps.out]\nmethod = "passthrough"\ninputs = ["a"]\n'
    )
    recipe = load_recipe(main)
    dependency = recipe.sources["a"].dependency
    with pytest.raises(PlanError) as info:
        flatten(recipe, bind=Dependencies(files={dependency: installed}).bind)
    e = info.value
    assert e.message == "my-pkg@0.1.0 has no step 'nope'" and e.key == "sources.a.step" and e.line == 7


def test_errors_inside_an_imported_step_point_into_its_file(write_recipe):
    other = write_recipe(
        OTHER.replace(
            'inputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]',
            'inputs = [{ model = "ft1", weight = 1 }, { model = "wide", weight = 1 }]',
        ),
        name="other.toml",
    )
    main = write_recipe('[steps.top]\nmethod = "passthrough"\ninputs = ["shared"]\n', name="main.toml")
    main.write_text(
        main.read_text().replace("[sources]\n", '[sources]\nshared = { recipe = "other.toml", step = "soup" }\n')
    )
    from mergepkg.layout.steps import lay_out

    res = resolve(load_recipe(main), Session())
    with pytest.raises(Exception) as info:
        lay_out(res.recipe, res.plan.order, {n: s.folder for n, s in res.sources.items()})
    assert info.value.file == str(other.resolve()) and info.value.key == "steps.soup.inputs[1]"


def test_recipes_importing_each_other_is_an_error(tmp_path):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text(
        '[package]\nname="a"\nversion="1"\n[sources]\nx = { recipe = "b.toml", step = "s" }\n'
        '[steps.s]\nmethod = "passthrough"\ninputs = ["x"]\n'
    )
    b.write_text(
        '[package]\nname="b"\nversion="1"\n[sources]\ny = { recipe = "a.toml", step = "s" }\n'
        '[steps.s]\nmethod = "passthrough"\ninputs = ["y"]\n'
    )
    with pytest.raises(PlanError, match="import each other"):
        resolve(load_recipe(a), Session())


def test_recipe_source_needs_a_step(tmp_path):
    (tmp_path / "o.toml").write_text(OTHER)
    p = tmp_path / "m.toml"
    p.write_text(
        '[package]\nname="m"\nversion="1"\n[sources]\nx = { recipe = "o.toml", revision = "v1" }\n'
        '[steps.s]\nmethod = "passthrough"\ninputs = ["x"]\n'
    )
    with pytest.raises(RecipeError) as info:
        load_recipe(p)
    assert info.value.key == "sources.x.revision"


def test_an_input_named_base_keeps_giving_the_tokenizer_when_imported(tmp_path, models):
    """A step without a base whose input is named `base` takes that input's tokenizer;
    imported (and so renamed), it still does, and its key is the same."""
    other = tmp_path / "other.toml"
    other.write_text(
        f'[package]\nname = "o"\nversion = "0.1.0"\n[sources]\nft1 = {{ path = "{models["ft1"]}" }}\n'
        f'base = {{ path = "{models["base"]}" }}\n[steps.soup]\nmethod = "linear"\n'
        'inputs = [{ model = "ft1", weight = 1.0 }, { model = "base", weight = 1.0 }]\n'
    )
    main = tmp_path / "main.toml"
    main.write_text(
        '[package]\nname = "m"\nversion = "0.1.0"\n[sources]\nsoup = { recipe = "other.toml", step = "soup" }\n'
        '[steps.out]\nmethod = "passthrough"\ninputs = ["soup"]\n'
    )
    own = resolve(load_recipe(other), Session())
    imported = resolve(load_recipe(main), Session())
    assert imported.recipe.steps["soup::soup"].tokenizer_model == "soup::base"
    assert imported.keys["soup::soup"] == own.keys["soup"]

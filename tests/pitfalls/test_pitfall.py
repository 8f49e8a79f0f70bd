"""The warning itself: `[package] allow` parsed and checked, a warning placed in the file
its step is written in, allowed codes dropped (the imported file's too), and the one
line `--deny-warnings` fails with."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergepkg.errors import RecipeError
from mergepkg.pitfalls.params import recipe_pitfalls
from mergepkg.pitfalls.pitfall import Pitfall, WarningsDenied, deny, settle
from mergepkg.recipe.allow import CODES
from mergepkg.recipe.parse import load_recipe

BODY = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.95 }, { model = "ft2", weight = 0.05 }]\n'


def with_allow(path, allow: str):
    path.write_text(path.read_text().replace('version = "0.1.0"\n', f'version = "0.1.0"\nallow = {allow}\n', 1))
    return path


def test_every_code_is_documented():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "warnings.md").read_text()
    for code in CODES:
        assert f"## {code}" in docs, code


@pytest.mark.parametrize(
    ("allow", "says", "hint"),
    [
        ('["MP999"]', "unknown warning code 'MP999'", None),
        ('["mp102"]', "unknown warning code 'mp102'", "did you mean 'MP102'?"),
        ('"MP102"', "expected a list of warning codes", None),
        ("[102]", "expected a warning code", None),
    ],
)
def test_allow_is_checked_where_it_is_written(recipe_file, allow, says, hint):
    path = with_allow(recipe_file(BODY), allow)
    with pytest.raises(RecipeError) as e:
        load_recipe(path)
    assert says in e.value.message and e.value.line == 4 and e.value.key.startswith("package.allow")
    if hint:
        assert e.value.hint == hint


def test_allow_keeps_codes_once_in_order(recipe_file):
    recipe = load_recipe(with_allow(recipe_file(BODY), '["MP302", "MP102", "MP302"]'))
    assert recipe.allow == ("MP302", "MP102")


def test_a_warning_reads_like_an_error(recipe_file):
    path = recipe_file(BODY)
    recipe = load_recipe(path)
    (p,) = settle(recipe_pitfalls(recipe), recipe)
    line = path.read_text().splitlines().index(BODY.splitlines()[2]) + 1
    assert (p.file, p.line, p.key) == (str(path), line, "steps.m.inputs[0]")
    assert str(p).splitlines() == [f"MP102: {path}:{line}: steps.m.inputs[0]: {p.message}", f"  hint: {p.hint}"]
    assert p.title == CODES["MP102"]
    assert settle([p, p], recipe) == [p]  # each once


def test_an_imported_step_is_placed_in_its_file_and_its_allow_holds(recipe_file):
    other = recipe_file(BODY, name="other.toml")
    main = recipe_file('[steps.top]\nmethod = "passthrough"\ninputs = ["shared"]\n', name="main.toml")
    main.write_text(
        main.read_text().replace("[sources]\n", '[sources]\nshared = { recipe = "other.toml", step = "m" }\n')
    )
    from mergepkg.resolve.resolution import expand
    from mergepkg.store.session import Session

    def shown():
        flat = expand(load_recipe(main), Session())
        return settle(recipe_pitfalls(flat), flat)

    (p,) = shown()
    assert p.file == str(other) and p.key == "steps.m.inputs[0]" and p.code == "MP102"
    with_allow(other, '["MP102"]')
    assert shown() == []


def test_deny_is_one_line_naming_the_codes():
    deny([])  # nothing found: nothing raised
    found = [Pitfall("MP102", "a"), Pitfall("MP101", "b"), Pitfall("MP102", "c")]
    with pytest.raises(WarningsDenied) as e:
        deny(found, "nothing was built")
    assert e.value.message == "3 warnings (MP101, MP102) and --deny-warnings: nothing was built"
    assert e.value.hint.endswith('[package] allow = ["MP101"]')


def test_models_are_named_as_the_file_the_warning_points_into_names_them(recipe_file):
    """Flattening reads an imported step's models as `shared::ft1`, and the import itself
    as `shared::m`: names written nowhere."""
    other = recipe_file(BODY, name="other.toml")
    top = '[steps.top]\nmethod = "linear"\ninputs = [{ model = "shared", weight = 0.95 }, { model = "ft3", weight = 0.05 }]\n'
    main = recipe_file(top, name="main.toml")
    main.write_text(
        main.read_text().replace("[sources]\n", '[sources]\nshared = { recipe = "other.toml", step = "m" }\n')
    )
    from mergepkg.resolve.resolution import expand
    from mergepkg.store.session import Session

    flat = expand(load_recipe(main), Session())
    imported, own = settle(recipe_pitfalls(flat), flat)
    assert imported.file == str(other) and imported.message.startswith("'ft1' has 95% of the weight")
    assert "'ft1', allow MP102" in imported.hint
    assert own.file == str(main) and own.message.startswith("'shared' has 95% of the weight")


def test_written_name_drops_the_prefixes_flattening_adds():
    from mergepkg.pitfalls.pitfall import written_name
    from mergepkg.recipe.model import Origin, Step

    nested = Step(name="a::b::m", method="linear", origin=Origin(Path("lib2.toml"), "", "m", 0))
    assert written_name(nested, "a::b::ft1") == "ft1"
    imported = Step(name="a::m", method="linear", origin=Origin(Path("lib.toml"), "", "m", 0))
    assert written_name(imported, "a::b::m") == "b"  # lib.toml's own import `b`
    assert written_name(Step(name="top", method="linear"), "a::m") == "a"

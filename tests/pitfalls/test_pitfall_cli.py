"""`mergepkg validate` and `mergepkg build` print each warning on stderr with its code,
place and hint; `--deny-warnings` exits 1 with one summary line and builds nothing."""

from __future__ import annotations

import pytest
from helpers import cli
from pitfall_models import recipe, stub_model

# MP101 (sum 1.5, normalize off) and MP102 ('a' has 93% of the weight)
BODY = """
[steps.m]
method = "linear"
inputs = [{ model = "a", weight = 1.4 }, { model = "b", weight = 0.1 }]
params.normalize = false
"""


@pytest.fixture
def stubs(tmp_path):
    base = stub_model(tmp_path / "models" / "a", seed=0)
    return {"a": base, "b": stub_model(tmp_path / "models" / "b", seed=1, like=base)}


def line_of(path, start: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if line.startswith(start))


def test_validate_prints_each_warning_with_its_place_and_hint(tmp_path, stubs, capsys):
    path = recipe(tmp_path, stubs, BODY)
    code, out, err = cli(capsys, "validate", path)
    assert code == 0 and "linear" in out  # the table, on stdout as before
    lines = err.splitlines()
    inputs = line_of(path, "inputs")
    assert lines[0].startswith(f"warning: MP101: {path}:{inputs}: steps.m.inputs: the weights sum to 1.5")
    assert lines[1].startswith("  hint: make the weights sum to 1")
    assert lines[2].startswith(f"warning: MP102: {path}:{inputs}: steps.m.inputs[0]: 'a' has 93% of the weight")
    assert lines[3].startswith("  hint: ")
    assert lines[-1] == "ok: 1 steps, outputs: m, 2 warnings"


def test_warnings_name_the_recipe_as_it_was_typed(tmp_path, stubs, capsys, monkeypatch):
    """As parse errors do: `../r.toml`, not the absolute path the recipe is read by."""
    path = recipe(tmp_path, stubs, BODY)
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    typed = f"../{path.relative_to(tmp_path)}"
    code, _, err = cli(capsys, "validate", typed)
    assert code == 0 and err.startswith(f"warning: MP101: {typed}:{line_of(path, 'inputs')}: steps.m.inputs:")


def test_validate_deny_warnings_exits_1_with_one_summary_line(tmp_path, stubs, capsys):
    path = recipe(tmp_path, stubs, BODY)
    code, _, err = cli(capsys, "validate", path, "--deny-warnings")
    assert code == 1
    assert "error: 2 warnings (MP101, MP102) and --deny-warnings: the recipe is not valid as it is" in err
    assert "ok:" not in err and "Traceback" not in err


def test_allowed_codes_are_not_shown_nor_denied(tmp_path, stubs, capsys):
    path = recipe(tmp_path, stubs, BODY, allow='"MP101", "MP102"')
    code, _, err = cli(capsys, "validate", path, "--deny-warnings")
    assert code == 0 and "warning" not in err and err.strip().endswith("ok: 1 steps, outputs: m")


def test_a_clean_recipe_passes_deny_warnings(tmp_path, stubs, capsys):
    body = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "a", weight = 0.5 }, { model = "b", weight = 0.5 }]\n'
    code, _, err = cli(capsys, "validate", recipe(tmp_path, stubs, body), "--deny-warnings")
    assert code == 0 and "warning" not in err


def test_build_deny_warnings_writes_nothing(tmp_path, stubs, capsys, mergepkg_home):
    path = recipe(tmp_path, stubs, BODY)
    out_dir = tmp_path / "out"
    code, out, err = cli(capsys, "build", path, "--out", out_dir, "-q", "--deny-warnings")
    assert code == 1 and out == ""
    assert "warning: MP101: " in err and "warning: MP102: " in err
    assert "error: 2 warnings (MP101, MP102) and --deny-warnings: nothing was built" in err
    assert not out_dir.exists() and not path.with_suffix(".lock").exists()
    assert not (mergepkg_home / "store").exists() or not any((mergepkg_home / "store").iterdir())


@pytest.mark.slow
def test_build_prints_the_warnings_and_builds(tmp_path, stubs, capsys):
    path = recipe(tmp_path, stubs, BODY)
    code, out, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")
    assert code == 0 and out.strip() == str(tmp_path / "out")
    assert err.count("warning: MP10") == 2 and "done: 1 built" in err


def two_recipes(tmp_path, stubs, second: str) -> tuple:
    """A clean recipe (package `first`) and one with `second` as its steps (`second`)."""
    clean = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "a", weight = 0.5 }, { model = "b", weight = 0.5 }]\n'
    paths = []
    for name, body in (("first", clean), ("second", second)):
        (tmp_path / name).mkdir()
        path = recipe(tmp_path / name, stubs, body)
        path.write_text(path.read_text().replace('name = "pitfalls"', f'name = "{name}"'))
        paths.append(path)
    return tuple(paths)


def test_build_deny_warnings_checks_every_recipe_before_building_one(tmp_path, stubs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = two_recipes(tmp_path, stubs, BODY)
    code, out, err = cli(capsys, "build", first, second, "-q", "--deny-warnings")
    assert code == 1 and out == ""
    assert (
        "warning: MP101: " in err and "error: 2 warnings (MP101, MP102) and --deny-warnings: nothing was built\n" in err
    )
    assert not (tmp_path / "out").exists() and not first.with_suffix(".lock").exists()


@pytest.mark.slow
def test_build_deny_warnings_names_the_recipes_built_before_a_layout_warning(tmp_path, stubs, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stubs["mis"] = stub_model(tmp_path / "models" / "mis", seed=2, like=stubs["a"], arch="MistralForCausalLM")
    body = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "a", weight = 0.5 }, { model = "mis", weight = 0.5 }]\n'
    first, second = two_recipes(tmp_path, stubs, body)  # MP202: known once `second` is laid out
    code, _, err = cli(capsys, "build", first, second, "-q", "--deny-warnings")
    assert code == 1 and "warning: MP202: " in err
    said = f"nothing was built for {second}; {first}, before it, was built"
    assert f"error: 1 warning (MP202) and --deny-warnings: {said}" in err

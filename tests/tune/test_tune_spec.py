"""The tune file: located errors, and substitution that keeps upstream keys."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mergepkg import api
from mergepkg._toml import tomllib
from mergepkg.errors import RecipeError
from mergepkg.tune.spec import load_tune
from mergepkg.tune.substitute import check_space, read_base, trial_recipe, values

DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo.toml"
TASKS = DEMO.parent / "demo" / "tasks"
VAL = DEMO.parent / "demo-tune" / "tasks"  # scripts/demo_validation.py


def tune_file(tmp_path: Path, space: str, *, extra: str = "", test: Path = TASKS / "inc.jsonl") -> Path:
    path = tmp_path / "t.toml"
    path.write_text(
        f'[tune]\nrecipe = "{DEMO}"\nstep = "ties"\ntrials = 2\n{extra}\n'
        f"[tune.space]\n{space}\n"
        f'[tune.objective]\nvalidation = ["{VAL}/inc_val.jsonl"]\ntest = ["{test}"]\n'
    )
    return path


@pytest.mark.parametrize(
    ("space", "extra", "line", "words"),
    [
        ('"steps.ties.inputs[0].weight" = [1.0, 0.5]', "", 7, "low < high"),
        ('"steps.ties.inputs[0].weight" = [0, 1]\n"steps.linear.inputs[0].weight" = [0, 1]', "", 8, "not a parameter"),
        ('"steps.ties.inputs[0].weight" = [0, 1]', "sampler = 'grid'", 5, "sampler"),
        ('"steps.ties.inputs[0].weight" = [0, 1]', "trails = 3", 5, "unknown key 'trails'"),
        ('"steps.ties.inputs[0].weight" = [0.0, inf]', "", 7, "finite"),
        ('"steps.ties.inputs[0].density" = [0.12, 0.14]', "digits = 1", 7, "`digits` = 1 decimals"),
        ('"steps.ties.inputs[0].density" = [0.0004, 0.0006]', "", 7, "`digits` = 3 decimals"),
    ],
)
def test_errors_point_at_the_tune_file_line(tmp_path, space, extra, line, words):
    with pytest.raises(RecipeError) as e:
        load_tune(tune_file(tmp_path, space, extra=extra))
    assert e.value.line == line and words in e.value.message


def test_paths_are_checked_against_the_recipe(tmp_path):
    spec = load_tune(tune_file(tmp_path, '"steps.ties.inputs[5].weight" = [0, 1]'))
    with pytest.raises(RecipeError) as e:
        check_space(spec, read_base(spec))
    assert e.value.line == 7 and "no steps.ties.inputs[5].weight" in e.value.message
    spec = load_tune(tune_file(tmp_path, '"steps.ties.inputs[0].density" = [0.5, 2]'))
    with pytest.raises(RecipeError) as e:  # the recipe's own check, at the space's bound
        check_space(spec, read_base(spec))
    assert "high end" in e.value.message and e.value.file == str(tmp_path / "t.toml") and e.value.line == 7


def test_validation_and_test_must_differ(tmp_path):
    with pytest.raises(RecipeError, match="also a test task"):
        load_tune(tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]', test=VAL / "inc_val.jsonl"))


def test_substitution_keeps_upstream_keys_and_gradients_become_lists(tmp_path):
    space = '"steps.ties.inputs[0].weight" = [0, 1]\n"steps.ties.inputs[1].weight" = [[0, 1], [0, 1], [0, 1]]'
    spec = load_tune(tune_file(tmp_path, space))
    base = read_base(spec)
    check_space(spec, base)
    chosen = values(spec.space, [0.25, 0.0, 0.5, 1.0], spec.digits)
    assert chosen == {"steps.ties.inputs[0].weight": 0.25, "steps.ties.inputs[1].weight": [0.0, 0.5, 1.0]}
    before = {n: s.key for n, s in api.status(DEMO).steps.items()}
    after = {n: s.key for n, s in api.status(trial_recipe(base, chosen)).steps.items()}
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"ties", "ties_slerp"}  # the tuned step and what reads it; upstream kept


def test_the_recipe_is_copied_once_however_many_dimensions(tmp_path, monkeypatch):
    """Each dimension's check deep-copied the whole recipe: 398 dimensions took 4.7 s
    before the first trial."""
    import copy

    from mergepkg.tune import substitute

    space = "\n".join(f'"steps.ties.inputs[{i}].weight" = [0, 1]' for i in range(2))
    space += '\n"steps.ties.inputs[0].density" = [0.1, 0.9]\n"steps.ties.inputs[1].density" = [0.1, 0.9]'
    spec = load_tune(tune_file(tmp_path, space))
    base = read_base(spec)
    copies = []
    real = copy.deepcopy
    monkeypatch.setattr(substitute.copy, "deepcopy", lambda x, *a: copies.append(1) or real(x, *a))
    check_space(spec, base)
    assert len(copies) == 1 + 2  # the checks' one copy; one per trial recipe at each end of the space
    copies.clear()
    substitute.current(base, spec.space)  # the search's starting point
    assert len(copies) == 1


def test_values_stay_within_their_ranges_at_every_digit(tmp_path):
    """Rounding to `digits` never leaves [low, high] (0.13 of [0.12, 0.25] is 0.1 at one
    decimal: held at 0.2), and bounds as written decide (0.3 is 0.3)."""
    space = '"steps.ties.inputs[0].density" = [0.12, 0.25]\n"steps.ties.inputs[1].density" = [0.3, 0.7]'
    spec = load_tune(tune_file(tmp_path, space, extra="digits = 1"))
    for u in (0.0, 0.05, 0.5, 0.95, 1.0):
        chosen = values(spec.space, [u, u], spec.digits)
        assert chosen["steps.ties.inputs[0].density"] == 0.2
        assert 0.3 <= chosen["steps.ties.inputs[1].density"] <= 0.7
    assert values(spec.space, [0.0, 0.0], 1)["steps.ties.inputs[1].density"] == 0.3


def test_a_task_listed_twice_and_a_harness_task_unknown_are_located(tmp_path):
    from mergepkg.store.session import Session
    from mergepkg.tune.search import tasks

    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]')
    text = path.read_text()
    val = f'validation = ["{VAL}/inc_val.jsonl"]'
    path.write_text(text.replace(val, f'validation = [\n  "{VAL}/inc_val.jsonl",\n  "{VAL}/inc_val.jsonl",\n]'))
    with pytest.raises(RecipeError, match="listed twice") as e:
        load_tune(path)
    assert e.value.line == 11
    (tmp_path / "yamls").mkdir()
    entry = '{ harness = "nosuch_task", include = "yamls" }'
    path.write_text(text.replace(val, f'validation = [\n  "{VAL}/inc_val.jsonl",\n  {entry},\n]'))
    spec = load_tune(path)
    with pytest.raises(RecipeError, match="no task 'nosuch_task'") as e:
        tasks(spec.validation, Session(), spec)
    assert e.value.file == str(path) and e.value.line == 11 and e.value.key == "tune.objective.validation[1]"


def test_a_dotted_step_name_is_tuned_by_its_quoted_path(tmp_path):
    """`steps."soup.v2".inputs[0].weight` was split at every dot: KeyError."""
    from mergepkg.tune.substitute import Base, substituted

    text = '[steps."soup.v2"]\nmethod = "linear"\ninputs = [{ model = "a", weight = 0.5 }]\n'
    base = Base(tmp_path / "r.toml", text, tomllib.loads(text))
    doc = substituted(base, {'steps."soup.v2".inputs[0].weight': 0.3})
    assert doc["steps"]["soup.v2"]["inputs"][0]["weight"] == 0.3


def test_best_toml_finds_a_path_source_where_the_recipe_s_parser_does(tmp_path):
    """Through a symlinked recipe folder and `..`, the relocated path named a folder that
    does not exist; the parser reads the path against the folder the link leads to."""
    from mergepkg.recipe.parse import local_path
    from mergepkg.tune.substitute import Base, relocated_text

    (tmp_path / "real" / "proj").mkdir(parents=True)
    (tmp_path / "real" / "models" / "a").mkdir(parents=True)
    (tmp_path / "lnk").mkdir()
    (tmp_path / "lnk" / "proj").symlink_to(tmp_path / "real" / "proj")
    text = '[sources]\na = { path = "../models/a" }\n'
    recipe = tmp_path / "lnk" / "proj" / "r.toml"
    recipe.write_text(text)
    out = tmp_path / "out"
    out.mkdir()
    moved = tomllib.loads(relocated_text(Base(recipe, text, tomllib.loads(text)), {}, out, "best"))
    assert local_path(out / "best.toml", moved["sources"]["a"]["path"]) == local_path(recipe, "../models/a")
    assert local_path(recipe, "../models/a").is_dir()


def checked(path: Path) -> None:
    """The tune file loaded and its space checked against its recipe, as `search` does first."""
    spec = load_tune(path)
    check_space(spec, read_base(spec))


def test_an_evaluated_step_not_made_from_the_searched_one_is_refused(tmp_path):
    """`evaluate = "linear"` beside `step = "ties"`: every trial scored the same model."""
    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]', extra='evaluate = "linear"')
    with pytest.raises(RecipeError, match="not made from step 'ties'") as e:
        checked(path)
    assert e.value.key == "tune.evaluate" and e.value.line == 5 and "ties, ties_slerp" in e.value.hint
    checked(tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]', extra='evaluate = "ties_slerp"'))


@pytest.mark.parametrize(
    ("path", "words", "hint"),
    [
        ("steps.slerp.params.t", "is a list of conditions", '"steps.slerp.params.t[0].value"'),
        ("steps.slerp.params.t[1]", "names an item of a list", '"steps.slerp.params.t[1].value"'),
    ],
)
def test_a_list_of_conditions_is_not_replaced_by_a_number(tmp_path, path, words, hint):
    """`params.t` of [[...t]] tables took the trial's number, every condition gone; `t[1]`
    said the recipe had no such path, with a hint about inputs."""
    recipe = DEMO.parent / "slerp-gradient.toml"
    tune = tmp_path / "t.toml"
    tune.write_text(
        f'[tune]\nrecipe = "{recipe}"\nstep = "slerp"\n[tune.space]\n"{path}" = [0, 1]\n'
        f'[tune.objective]\nvalidation = ["{VAL}/inc_val.jsonl"]\ntest = ["{TASKS}/inc.jsonl"]\n'
    )
    with pytest.raises(RecipeError, match=words) as e:
        checked(tune)
    assert e.value.line == 5 and hint in e.value.hint
    tune.write_text(tune.read_text().replace(f'"{path}" = [0, 1]', '"steps.slerp.params.t[2].value" = [0, 1]'))
    checked(tune)  # a condition's number is searched


@pytest.mark.parametrize(
    ("recipe", "words"),
    [
        (b"\xef\xbb\xbf", None),  # a byte-order mark: `build` reads it, so does tune
        (b"[steps\n", "r.toml:1: invalid TOML"),
        (b"\xff\xfe[steps]", "r.toml: not UTF-8"),
        (None, "Is a directory"),
    ],
)
def test_a_recipe_tune_cannot_read_is_an_error_at_tune_recipe(tmp_path, recipe, words):
    """These were tracebacks: TOMLDecodeError, UnicodeDecodeError, IsADirectoryError."""
    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]')
    if recipe is None:
        path.write_text(path.read_text().replace(f'recipe = "{DEMO}"', 'recipe = "."'))
    else:
        (tmp_path / "r.toml").write_bytes(recipe + (DEMO.read_bytes() if words is None else b""))
        path.write_text(path.read_text().replace(f'recipe = "{DEMO}"', 'recipe = "r.toml"'))
        shutil.copytree(DEMO.parent / "demo", tmp_path / "demo", ignore=shutil.ignore_patterns("*.safetensors"))
    if words is None:
        checked(path)
        return
    with pytest.raises(RecipeError, match=words) as e:
        checked(path)
    assert e.value.key == "tune.recipe" and e.value.line == 2


@pytest.mark.parametrize(
    ("extra", "objective", "key", "words"),
    [
        ("seconds = true", "", "tune.seconds", "`seconds` must be a positive number"),
        ("evaluate = 5", "", "tune.evaluate", "`evaluate` must be a step name"),
        ("", '{ harness = "x", include = 5 }', "tune.objective.validation", "`include` must be a string"),
        ("", '{ harness = "x", metric = 5 }', "tune.objective.validation", "`metric` must be a string"),
        ("", '{ harness = "x", limit = true }', "tune.objective.validation", "`limit` must be a whole number"),
        ("", '{ harness = "x", seed = false }', "tune.objective.validation", "`seed` must be a whole number"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(tmp_path, extra, objective, key, words):
    """`seconds = true` was 1 s, `evaluate = 5` the step "5"; the others were TypeErrors."""
    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]', extra=extra)
    if objective:
        path.write_text(
            path.read_text().replace(f'validation = ["{VAL}/inc_val.jsonl"]', f"validation = [{objective}]")
        )
    with pytest.raises(RecipeError, match=words) as e:
        load_tune(path)
    assert e.value.key == key


def test_no_trials_and_a_range_wider_than_a_float_are_refused(tmp_path):
    """`trials = 0` ran nothing, then said no trial finished; [-1e308, 1e308] said "got nan"."""
    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]')
    path.write_text(path.read_text().replace("trials = 2", "trials = 0"))
    with pytest.raises(RecipeError, match="`trials` must be a whole number, 1 or more") as e:
        load_tune(path)
    assert e.value.line == 4
    with pytest.raises(RecipeError, match="wider than a float holds") as e:
        load_tune(tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [-1e308, 1e308]'))
    assert e.value.line == 7


def test_a_tune_file_that_is_not_utf8_is_an_error(tmp_path):
    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]')
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    with pytest.raises(RecipeError, match="not UTF-8") as e:
        load_tune(path)
    assert e.value.file == str(path)


def test_a_task_file_s_bad_line_keeps_its_number_through_the_tune_file(tmp_path):
    from mergepkg.store.session import Session
    from mergepkg.tune.search import tasks

    (tmp_path / "val.jsonl").write_text('{"prompt": "a", "answer": "b"}\n\n{"prompt": "a"}\n')
    path = tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]')
    path.write_text(path.read_text().replace(f"{VAL}/inc_val.jsonl", "val.jsonl"))
    spec = load_tune(path)
    with pytest.raises(RecipeError) as e:
        tasks(spec.validation, Session(), spec)
    assert str(e.value).startswith(f"{path}:9: tune.objective.validation[0]: {tmp_path / 'val.jsonl'}:3: expected")


def test_the_test_split_s_task_files_are_checked_before_the_first_trial(tmp_path, monkeypatch):
    """A bad test line failed only after every trial had run."""
    from mergepkg.store.session import Session
    from mergepkg.tune import search as search_mod

    (tmp_path / "test.jsonl").write_text('{"prompt": "a"}\n')
    spec = load_tune(tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]', test=tmp_path / "test.jsonl"))
    monkeypatch.setattr(search_mod, "run_trial", lambda *a, **k: pytest.fail("a trial ran"))
    with pytest.raises(RecipeError, match=r"test\.jsonl:1: expected") as e:
        search_mod.search(spec, Session())
    assert e.value.key == "tune.objective.test[0]" and not spec.folder.exists()


def test_best_toml_is_written_only_once_the_tasks_load(tmp_path):
    """A test task that failed in `finish` left best.toml without its best.lock."""
    from mergepkg.store.session import Session
    from mergepkg.tune.log import Trial
    from mergepkg.tune.search import Searched, finish

    (tmp_path / "test.jsonl").write_text('{"prompt": "a", "answer": "b"}\n')
    spec = load_tune(tune_file(tmp_path, '"steps.ties.inputs[0].weight" = [0, 1]', test=tmp_path / "test.jsonl"))
    trial = Trial(0, {"steps.ties.inputs[0].weight": 0.5}, [0.5], "k", {}, 0.5, 0.0, 0.0, False, 0.0)
    (tmp_path / "test.jsonl").write_text("not json\n")  # changed since the search checked it
    with pytest.raises(RecipeError, match="expected a JSON object") as e:
        finish(Searched(spec, read_base(spec), [trial], 0, "trials"), Session())
    assert e.value.key == "tune.objective.test[0]" and not (spec.folder / "best.toml").exists()

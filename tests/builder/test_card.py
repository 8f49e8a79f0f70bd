"""What an output folder holds besides its model: the model card (front matter read back by
huggingface_hub), the recipe and its lock, with which the folder rebuilds itself, and the
mergekit config where mergekit can run the step."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from helpers import build_recipe

from mergepkg.builder.bundle import LOCK_FILE, RECIPE_FILE
from mergepkg.builder.mergekit_yaml import MERGEKIT_FILE
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.parse import load_recipe

LINEAR = '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
OVER_A_STEP = '[steps.top]\nmethod = "task_arithmetic"\nbase = "base"\ninputs = [{ model = "soup", weight = 0.5 }]\n'


def card_data(folder: Path) -> dict:
    from huggingface_hub import ModelCard

    return ModelCard.load(folder / "README.md").data.to_dict()


def local_folders(card: str) -> dict[str, str]:
    """The card's table of local folders: source -> path relative to mergepkg.toml."""
    return dict(re.findall(r"^\| ([\w:.-]+) \| `([^`]+)` \|$", card, re.M))


def test_front_matter_names_only_hub_repos(write_recipe, tiny_hub, models, tmp_path):
    path = write_recipe(
        '[steps.soup]\nmethod = "task_arithmetic"\nbase = "hub_base"\n'
        'inputs = [{ model = "hub_ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'
    )
    text = path.read_text().replace(
        "[sources]\n", '[sources]\nhub_base = { hf = "tiny/base" }\nhub_ft1 = { hf = "tiny/ft1" }\n'
    )
    path.write_text(text.replace('version = "0.1.0"\n', 'version = "0.1.0"\ntags = ["tiny", "merge"]\n', 1))
    (folder,) = build_recipe(path, tmp_path / "out").outputs.values()
    data = card_data(folder)
    assert data["base_model"] == ["tiny/base", "tiny/ft1"]  # the local ft2 is not a repo id
    assert data["base_model_relation"] == "merge" and data["library_name"] == "transformers"
    assert data["tags"] == ["merge", "mergepkg", "tiny"]
    card = (folder / "README.md").read_text()
    assert "Hugging Face sources are fetched at the commits the lock pins: tiny/base, tiny/ft1." in card
    assert local_folders(card)["ft2"] == str(models["ft2"])  # written as an absolute path: named so


def test_local_sources_only_no_base_model(write_recipe, tmp_path):
    (folder,) = build_recipe(write_recipe(LINEAR), tmp_path / "out").outputs.values()
    data = card_data(folder)
    assert "base_model" not in data
    assert data["tags"] == ["merge", "mergepkg"] and data["base_model_relation"] == "merge"


def test_the_folder_holds_recipe_lock_and_mergekit_config(write_recipe, tmp_path):
    """(The recipe names its folders by absolute paths: the placed lock names them so too.)"""
    path = write_recipe(LINEAR + "\n" + OVER_A_STEP)
    path.write_text(
        path.read_text().replace('version = "0.1.0"\n', 'version = "0.1.0"\noutputs = ["soup", "top"]\n', 1)
    )
    outputs = build_recipe(path, tmp_path / "out").outputs
    lock = read_lock(lock_path(load_recipe(path)))
    for name, folder in outputs.items():
        assert (folder / RECIPE_FILE).read_text() == path.read_text()
        placed = read_lock(folder / LOCK_FILE)
        assert placed.steps == lock.steps and placed.dependencies == lock.dependencies
        for n, src in placed.sources.items():  # the same folders, named from where the lock now is
            assert src.pin == lock.sources[n].pin
            assert (folder / src.path).resolve() == (path.parent / lock.sources[n].path).resolve()
        card = (folder / "README.md").read_text()
        assert f"mergepkg build {RECIPE_FILE} --locked" in card
        assert (folder / MERGEKIT_FILE).is_file() == (name == "soup")  # `top` reads a step: not mergekit's
        assert (MERGEKIT_FILE in card) == (name == "soup")
    assert "mergekit-yaml mergekit_config.yml" in (outputs["soup"] / MERGEKIT_FILE).read_text()


def copy_model(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dst)


def rebuild_in(folder: Path, home: Path, monkeypatch) -> dict[str, str]:
    """`mergepkg build mergepkg.toml --locked` in the output folder, with an empty store."""
    monkeypatch.setenv("MERGEPKG_HOME", str(home))
    monkeypatch.chdir(folder)
    report = build_recipe(Path(RECIPE_FILE), folder / "rebuilt", mode="locked")
    return {n: a.digest for n, a in report.artifacts.items()}


def test_the_output_folder_rebuilds_itself(models, tmp_path, monkeypatch):
    project = tmp_path / "project"
    for name in ("base", "ft1", "ft2"):
        copy_model(models[name], project / "models" / name)
    recipe = project / "recipe.toml"
    sources = "".join(f'{n} = {{ path = "models/{n}" }}\n' for n in ("base", "ft1", "ft2"))
    recipe.write_text(
        f'[package]\nname = "selfish"\nversion = "0.1.0"\n\n[sources]\n{sources}\n{LINEAR}\n{OVER_A_STEP}'
    )
    report = build_recipe(recipe, tmp_path / "published")
    (folder,) = report.outputs.values()
    card = (folder / "README.md").read_text()
    assert local_folders(card) == {"base": "models/base", "ft1": "models/ft1", "ft2": "models/ft2"}
    shipped = tmp_path / "downloaded"  # what someone gets from the hub: the folder alone ...
    shutil.copytree(folder, shipped)
    for name, where in local_folders(card).items():  # ... and the local models where the card says
        copy_model(models[name], shipped / where)
    digests = rebuild_in(shipped, tmp_path / "fresh-home", monkeypatch)
    assert digests == {n: a.digest for n, a in report.artifacts.items()}


def test_imported_recipe_files_travel_with_the_output(models, tmp_path, monkeypatch):
    """main.toml imports ../shared/soups.toml, whose sources are relative to it: the import
    goes under imports/, its path is rewritten, the lock is relocated and rebuilds."""
    project = tmp_path / "project"
    for name in ("base", "ft1", "ft2"):
        copy_model(models[name], project / "models" / name)
    (project / "shared").mkdir()
    (project / "shared" / "soups.toml").write_text(
        '[package]\nname = "soups"\nversion = "0.1.0"\nseed = 3\n\n[sources]\n'
        'ft1 = { path = "../models/ft1" }\nft2 = { path = "../models/ft2" }\n\n' + LINEAR
    )
    (project / "main").mkdir()
    main = project / "main" / "main.toml"
    main.write_text(
        '[package]\nname = "main"\nversion = "0.1.0"\n\n[sources]\n'
        'base = { path = "../models/base" }\n'
        "soup = { recipe = '../shared/soups.toml', step = \"soup\" }  # a literal string\n\n" + OVER_A_STEP
    )
    report = build_recipe(main, tmp_path / "published")
    (folder,) = report.outputs.values()
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.toml")) == ["imports/soups.toml", RECIPE_FILE]
    assert '"imports/soups.toml"' in (folder / RECIPE_FILE).read_text()
    assert (folder / "imports" / "soups.toml").read_text() == (project / "shared" / "soups.toml").read_text()
    card = (folder / "README.md").read_text()
    assert "`imports/soups.toml`" in card
    placed = local_folders(card)
    assert placed == {"base": "../models/base", "soup::ft1": "models/ft1", "soup::ft2": "models/ft2"}
    locked = read_lock(folder / LOCK_FILE)
    original = read_lock(lock_path(load_recipe(main)))
    assert {n: s.key for n, s in locked.steps.items()} == {n: s.key for n, s in original.steps.items()}
    assert {n: s.pin for n, s in locked.sources.items()} == {n: s.pin for n, s in original.sources.items()}
    assert {n: s.path for n, s in locked.sources.items()} == placed

    shipped = tmp_path / "downloaded" / "model"
    shutil.copytree(folder, shipped)
    for name, where in placed.items():
        copy_model(models[name.split("::")[-1]], shipped / where)
    digests = rebuild_in(shipped, tmp_path / "fresh-home", monkeypatch)
    assert digests == {n: a.digest for n, a in report.artifacts.items()}


@pytest.mark.parametrize("outputs", [1, 2])
def test_card_files_are_not_in_the_store(write_recipe, tmp_path, outputs, mergepkg_home):
    body = (
        LINEAR
        if outputs == 1
        else LINEAR
        + '\n[steps.z]\nmethod = "linear"\ninputs = [{ model = "ft2", weight = 1 }, { model = "ft3", weight = 1 }]\n'
    )
    report = build_recipe(write_recipe(body), tmp_path / "out")
    for name, folder in report.outputs.items():
        stored = {p.name for p in report.artifacts[name].folder.iterdir()}
        assert not {"README.md", RECIPE_FILE, LOCK_FILE, MERGEKIT_FILE} & stored
        assert {"README.md", RECIPE_FILE, LOCK_FILE, MERGEKIT_FILE} <= {p.name for p in folder.iterdir()}
        assert json.loads((folder / "config.json").read_text())  # the model is there too


def test_a_mixture_of_experts_is_tagged_moe():
    """As the Hub's MoE merges are: the front matter of recipes/moe-experts.toml's output."""
    from mergepkg.builder.card import front_matter
    from mergepkg.resolve.resolution import resolve
    from mergepkg.store.session import Session

    root = Path(__file__).resolve().parents[2]
    res = resolve(load_recipe(root / "recipes" / "moe-experts.toml"), Session())
    moe = next(n for n, s in res.recipe.steps.items() if s.moe)
    plain = next(n for n, s in res.recipe.steps.items() if not s.moe)
    assert "- moe" in front_matter(res, moe).splitlines()
    assert "- moe" not in front_matter(res, plain).splitlines()

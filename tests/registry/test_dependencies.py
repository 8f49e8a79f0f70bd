"""Installing a recipe's dependencies (mergepkg/registry/dependencies.py): what a
registry's recipe file may make a build read, and each recipe file parsed once per
resolution. Folder registries written as their owner could write them, by hand."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import pytest
from helpers import cli
from registries import new_registry

import mergepkg.recipe.parse
from mergepkg.errors import RegistryError
from mergepkg.lockfile import LockedDependency
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.parse import parse_recipe
from mergepkg.registry.client import Client, Registry
from mergepkg.registry.dependencies import install_dependencies, install_pick, installed_path
from mergepkg.settings import Settings


def published_by_hand(tmp_path: Path, capsys, text: str) -> Path:
    """A registry `evil` holding `text` as published (its index and sha256 right), written
    as the registry's owner can write any file: `publish` would refuse a local source."""
    root = tmp_path / "evil-registry"
    folder = new_registry(root, "evil")
    folder.publish(parse_recipe(text, tmp_path / "x.toml"), text.encode())
    assert cli(capsys, "registry", "add", "evil", root)[0] == 0
    return root


def consumer(tmp_path: Path) -> Path:
    path = tmp_path / "consumer" / "recipe.toml"
    path.parent.mkdir()
    path.write_text(
        '[package]\nname = "consumer"\nversion = "0.1.0"\n[dependencies]\nevilpkg = "^1"\n'
        '[sources]\nm = { dependency = "evilpkg", step = "merged" }\n'
        '[steps.out]\nmethod = "passthrough"\ninputs = ["m"]\n'
    )
    return path


EVIL = '[package]\nname = "evilpkg"\nversion = "1.0.0"\n[sources]\n'


def test_a_dependency_with_a_path_source_is_refused_before_it_is_installed(tmp_path, capsys, stub_models):
    """The registry's recipe named a model folder of the consumer's machine: it was pinned,
    locked and merged into the consumer's build."""
    stolen = stub_models["ft1"]
    text = EVIL + f'stolen = {{ path = "{stolen}" }}\n[steps.merged]\nmethod = "passthrough"\ninputs = ["stolen"]\n'
    root = published_by_hand(tmp_path, capsys, text)
    recipe = consumer(tmp_path)
    code, _, err = cli(capsys, "lock", recipe)
    assert code == 1
    assert f"error: {root}/recipes/evilpkg/1.0.0.toml:5: sources.stolen: evilpkg@1.0.0 from evil has sources" in err
    assert "would read files of this machine: stolen (path)" in err and "hint: its registry should have" in err
    assert not recipe.with_suffix(".lock").exists() and not (Settings().home / "packages").exists()


def test_a_dependency_importing_a_local_recipe_file_is_refused_before_it_is_read(tmp_path, capsys):
    """The registry's recipe imported a TOML file of the consumer's machine: it was parsed,
    and the error named one of its keys."""
    creds = tmp_path / "outside" / "creds.toml"
    creds.parent.mkdir()
    creds.write_text('[aws]\nsecret_key_AKIA_SECRET = "x"\n')
    text = EVIL + f'x = {{ recipe = "{creds}", step = "a" }}\n[steps.merged]\nmethod = "passthrough"\ninputs = ["x"]\n'
    published_by_hand(tmp_path, capsys, text)
    code, _, err = cli(capsys, "validate", consumer(tmp_path))
    assert code == 1
    assert "evilpkg@1.0.0 from evil has sources that would read files of this machine: x (recipe)" in err, err
    assert "AKIA" not in err and "aws" not in err


def test_an_installed_file_with_a_local_source_is_refused_when_used(tmp_path):
    """One installed before installing checked it: its sha256 is right, and still refused."""
    data = (EVIL + 'a = { path = "/" }\n').encode()
    pick = LockedDependency("evilpkg", "1.0.0", "/gone/registry", hashlib.sha256(data).hexdigest())
    path = installed_path(Settings(), pick)
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    with pytest.raises(RegistryError, match=r"evilpkg@1.0.0 from /gone/registry has sources .*: a \(path\)") as e:
        install_pick(Settings(), pick, Client(Settings(), []), download=False)
    assert (e.value.file, e.value.line, e.value.key) == (str(path), 5, "sources.a")


# -- each recipe file parsed once ----------------------------------------------------------
@pytest.fixture
def parsed(monkeypatch) -> Counter:
    """How many times each recipe file is read by `load_recipe` (file name -> count)."""
    counts: Counter = Counter()
    real = mergepkg.recipe.parse.parse_recipe

    def counting(text, path):
        counts[Path(path).name] += 1
        return real(text, path)

    monkeypatch.setattr(mergepkg.recipe.parse, "parse_recipe", counting)  # what load_recipe calls
    return counts


def test_a_resolution_parses_each_imported_file_once(tmp_path, capsys, stub_models, parsed):
    """Resolving loaded every imported file for its [dependencies], then flatten loaded it again."""
    head = '[package]\nname = "{}"\nversion = "0.1.0"\n[sources]\n'
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/b.toml").write_text(
        head.format("b")
        + f'm = {{ path = "{stub_models["ft1"]}" }}\n[steps.s]\nmethod = "passthrough"\ninputs = ["m"]\n'
    )
    (tmp_path / "a.toml").write_text(
        head.format("a")
        + 'b = { recipe = "sub/b.toml", step = "s" }\n[steps.s]\nmethod = "passthrough"\ninputs = ["b"]\n'
    )
    (tmp_path / "root.toml").write_text(
        head.format("root")
        + 'a = { recipe = "a.toml", step = "s" }\nb = { recipe = "sub/b.toml", step = "s" }\n'
        + '[steps.out]\nmethod = "passthrough"\ninputs = ["a"]\n[steps.other]\nmethod = "passthrough"\ninputs = ["b"]\n'
    )
    assert cli(capsys, "lock", tmp_path / "root.toml")[0] == 0
    assert parsed == {"root.toml": 1, "a.toml": 1, "b.toml": 1}


def test_a_locked_dependency_s_file_is_parsed_once(tmp_path, parsed):
    """A locked pick's file is read for its [dependencies], and flatten takes that reading."""
    folder = new_registry(tmp_path / "reg")
    text = '[package]\nname = "c"\nversion = "1.0.0"\n[sources]\nm = { hf = "tiny/base" }\n'
    text += '[steps.s]\nmethod = "passthrough"\ninputs = ["m"]\n'
    entry, _ = folder.publish(parse_recipe(text, tmp_path / "c.toml"), text.encode())
    root = parse_recipe(
        '[package]\nname = "root"\nversion = "0.1.0"\n[dependencies]\nc = "^1"\n'
        '[sources]\nu = { dependency = "c", step = "s" }\n[steps.out]\nmethod = "passthrough"\ninputs = ["u"]\n',
        tmp_path / "root.toml",
    )
    locked = {"c": LockedDependency("c", "1.0.0", str(folder.root), entry.sha256)}
    client = Client(Settings(), [Registry("reg", str(folder.root))])
    parsed.clear()
    deps = install_dependencies(root, Settings(), locked=locked, client=client)
    flat = flatten(root, bind=deps.bind, loaded=deps.loaded)
    assert set(flat.steps) == {"u::s", "out"} and parsed == {deps.files["c"].name: 1}

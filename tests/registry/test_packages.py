"""Registries on disk: publish, search, info, install, build by name, [dependencies] in
recipes and the lock, yanking, conflicts, checksums. The CLI runs in-process; sources are
Hugging Face repos in a cache laid out by hand (HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import json

import pytest
from helpers import cli, load_tensors
from registries import app, new_registry, skills

from mergepkg.errors import DependencyConflict, PublishError, RegistryError
from mergepkg.lockfile import read_lock
from mergepkg.recipe.names import canonical_name
from mergepkg.recipe.parse import load_recipe, parse_recipe
from mergepkg.registry.client import add_registry, configured
from mergepkg.registry.dependencies import install_dependencies
from mergepkg.registry.index import read_index
from mergepkg.settings import Settings


@pytest.fixture
def team(tmp_path, capsys):
    """A registry folder named `team`, configured in this test's MERGEPKG_HOME."""
    root = tmp_path / "registry"
    new_registry(root)
    assert cli(capsys, "registry", "add", "team", root)[0] == 0
    return root


def publish(tmp_path, capsys, text: str, name: str = "recipe.toml", registry: str = "team"):
    path = tmp_path / "published" / text.split('version = "')[1].split('"')[0] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return cli(capsys, "publish", path, "--registry", registry)


# -- names -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,want",
    [
        ("skills", "skills"),
        ("My_Pkg", None),
        ("my_pkg", "my-pkg"),
        ("team/my_pkg", "team/my-pkg"),
        ("../x", None),
        ("a/b/c", None),
        ("-x", None),
        ("x" * 65, None),
        ("x" * 64, "x" * 64),
        ("", None),
        ("abc\n", None),
        ("a\x00b", None),
    ],
)
def test_names(name, want):
    if want is None:
        with pytest.raises(RegistryError, match="invalid package name"):
            canonical_name(name)
    else:
        assert canonical_name(name) == want


# -- publish -----------------------------------------------------------------------------
def test_publish_writes_entry_file_and_summary(tiny_hub, team, tmp_path, capsys):
    code, out, err = publish(tmp_path, capsys, skills())
    assert code == 0, err
    data = (tmp_path / "published/0.1.0/recipe.toml").read_bytes()
    assert (team / "recipes/skills/0.1.0.toml").read_bytes() == data
    (entry,) = read_index((team / "index/skills.jsonl").read_text(), "index")
    import hashlib

    assert entry.sha256 == hashlib.sha256(data).hexdigest() and out.split()[-1] == f"sha256:{entry.sha256}"
    assert entry.sources == {"base": "tiny/base@main", "ft1": "tiny/ft1@main", "ft2": "tiny/ft2@main"}
    assert entry.tags == ("tiny", "llama") and not entry.yanked and entry.published.endswith("Z")
    packages = json.loads((team / "packages.json").read_text())["packages"]
    assert packages["skills"]["latest"] == "0.1.0"


def test_publish_records_pins_from_the_lock(tiny_hub, team, tmp_path, capsys):
    path = tmp_path / "published/0.1.0/recipe.toml"
    path.parent.mkdir(parents=True)
    path.write_text(skills())
    assert cli(capsys, "lock", path)[0] == 0
    assert cli(capsys, "publish", path, "-r", "team")[0] == 0
    (entry,) = read_index((team / "index/skills.jsonl").read_text(), "index")
    assert entry.sources["ft1"] == f"tiny/ft1@{tiny_hub['ft1']}"


def test_published_versions_are_immutable(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    code, _, err = publish(tmp_path, capsys, skills(), name="again.toml")  # same bytes: a no-op
    assert code == 0 and "already published" in err
    code, _, err = publish(tmp_path, capsys, skills(weight=0.9), name="other.toml")
    assert code == 1 and "skills@0.1.0 is already published with other content" in err and "bump" in err
    # `-` and `_` name the same package
    code, _, err = publish(tmp_path, capsys, skills(name="my_pkg", weight=0.1), name="a.toml")
    assert code == 0
    code, _, err = publish(tmp_path, capsys, skills(name="my-pkg", weight=0.2), name="b.toml")
    assert code == 1 and "my-pkg@0.1.0 is already published" in err


def test_publish_refuses_local_sources_naming_them(team, tmp_path, capsys, write_recipe):
    path = write_recipe('[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 }]\n')
    code, _, err = cli(capsys, "publish", path, "-r", "team")
    assert code == 1 and "cannot be published: base, ft1" in err and "Hugging Face Hub" in err
    assert "Traceback" not in err and not (team / "index").exists()


def test_publish_refuses_bad_names_versions_and_unknown_registries(tiny_hub, team, tmp_path, capsys):
    code, _, err = publish(tmp_path, capsys, skills(name="Bad Name"))
    assert code == 1 and "invalid package name 'Bad Name'" in err
    code, _, err = publish(tmp_path, capsys, skills(version="1.0"))
    assert code == 1 and "not a semantic version: '1.0'" in err
    code, _, err = publish(tmp_path, capsys, skills(), registry="nope")
    assert code == 1 and "no registry named 'nope'" in err


# -- search, info ---------------------------------------------------------------------
def test_search_and_info(tiny_hub, team, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    publish(tmp_path, capsys, skills())
    publish(tmp_path, capsys, skills("0.2.0", 0.7))
    publish(tmp_path, capsys, skills(name="other", extra="").replace("tiny", "small"), name="o.toml")
    code, out, err = cli(capsys, "search", "tiny llama")
    assert code == 0 and "skills" in out and "0.2.0" in out and "other" not in out
    assert "1 packages match" in err
    code, out, _ = cli(capsys, "search", "fine-tunes")
    assert "skills" in out and "other" in out
    import socket

    with socket.socket() as s:  # a port nothing listens on: a registry that is down
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert cli(capsys, "registry", "add", "dead", dead)[0] == 0
    code, out, err = cli(capsys, "search", "tiny llama")  # the other registries are still searched
    assert code == 0 and "skills" in out and "warning" in err and "dead" in err
    assert cli(capsys, "registry", "remove", "dead")[0] == 0
    code, out, _ = cli(capsys, "info", "skills@^0.1")
    assert "0.1.0" in out and "0.2.0" not in out and "tiny/ft1@main" in out
    code, out, _ = cli(capsys, "info", "skills")
    assert "0.1.0" in out and "0.2.0" in out
    code, _, err = cli(capsys, "info", "skills@^3")
    assert code == 1 and "no version of skills in team matches '^3'" in err and "0.1.0, 0.2.0" in err
    code, _, err = cli(capsys, "info", "skils")
    assert code == 1 and "no package named 'skils'" in err


# -- install and build by name --------------------------------------------------------
def test_install_picks_newest_matching_and_skips_yanked(tiny_hub, team, tmp_path, capsys):
    for v, w in (("0.1.0", 0.5), ("0.1.1", 0.6), ("0.2.0", 0.7)):
        assert publish(tmp_path, capsys, skills(v, w))[0] == 0
    code, out, err = cli(capsys, "install", "skills@^0.1")
    assert code == 0 and "installed skills 0.1.1" in err
    installed = out.strip()
    assert "0.1.1" in installed and load_recipe(installed).version == "0.1.1"
    assert cli(capsys, "yank", "skills@0.1.1", "-r", "team")[0] == 0
    assert "installed skills 0.1.0" in cli(capsys, "install", "skills@^0.1")[2]
    assert "installed skills 0.2.0" in cli(capsys, "install", "skills")[2]
    assert cli(capsys, "yank", "skills@0.1.1", "-r", "team", "--undo")[0] == 0
    assert "installed skills 0.1.1" in cli(capsys, "install", "skills@^0.1")[2]
    code, _, err = cli(capsys, "yank", "skills@9.9.9", "-r", "team")
    assert code == 1 and "skills@9.9.9 is not published here" in err


def test_build_by_name_from_another_home(tiny_hub, team, tmp_path, capsys, monkeypatch, models):
    import torch

    assert publish(tmp_path, capsys, skills())[0] == 0
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "elsewhere"))
    assert cli(capsys, "registry", "add", "team", team)[0] == 0
    code, out, err = cli(capsys, "build", "skills@^0.1", "--out", tmp_path / "out", "-q")
    assert code == 0, err
    got, base = load_tensors(out.strip()), load_tensors(models["base"])
    ft1, ft2 = load_tensors(models["ft1"]), load_tensors(models["ft2"])
    for k in base:
        assert torch.allclose(got[k], base[k] + 0.5 * (ft1[k] - base[k]) + 0.5 * (ft2[k] - base[k]), atol=1e-6)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out.strip())


def test_tampered_recipe_file_is_refused(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    (team / "recipes/skills/0.1.0.toml").write_text(skills(weight=5.0))
    code, _, err = cli(capsys, "install", "skills")
    assert code == 1 and "does not match its checksum" in err


# -- [dependencies] -------------------------------------------------------------------
def test_dependency_steps_are_inputs_and_locked(tiny_hub, team, tmp_path, capsys, models):
    import torch

    assert publish(tmp_path, capsys, skills())[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app())
    code, out, err = cli(capsys, "build", path, "--out", tmp_path / "out", "-q")
    assert code == 0, err
    lock = read_lock(tmp_path / "app.lock")
    dep = lock.dependencies["skills"]
    assert (dep.version, dep.registry) == ("0.1.0", str(team))
    assert dep.sha256 == read_index((team / "index/skills.jsonl").read_text(), "i")[0].sha256
    assert "skills::skills" in lock.steps and "skills::ft1" in lock.sources  # pinned like any source
    got = load_tensors(out.strip())
    base, ft1, ft2, ft3 = (load_tensors(models[n]) for n in ("base", "ft1", "ft2", "ft3"))
    k = "model.layers.0.mlp.up_proj.weight"
    merged = base[k] + 0.5 * (ft1[k] - base[k]) + 0.5 * (ft2[k] - base[k])
    assert torch.allclose(got[k], 0.75 * merged + 0.25 * ft3[k], atol=1e-6)

    # a newer version does not move the build; --locked holds; lock --upgrade moves it
    assert publish(tmp_path, capsys, skills("0.1.5", 0.6))[0] == 0
    assert cli(capsys, "build", path, "--out", tmp_path / "out", "--locked", "-q")[0] == 0
    assert read_lock(tmp_path / "app.lock").dependencies["skills"].version == "0.1.0"
    assert cli(capsys, "lock", path, "--upgrade", "skills")[0] == 0
    assert read_lock(tmp_path / "app.lock").dependencies["skills"].version == "0.1.5"


def test_yanked_version_stays_usable_from_the_lock(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app())
    assert cli(capsys, "lock", path)[0] == 0
    assert cli(capsys, "yank", "skills@0.1.0", "-r", "team")[0] == 0
    code, _, err = cli(capsys, "build", path, "--frozen", "--out", tmp_path / "out", "-q")
    assert code == 0, err
    (tmp_path / "app.lock").unlink()  # without the lock, the yanked version is not picked
    code, _, err = cli(capsys, "lock", path)
    assert code == 1 and "no version of skills in team matches '^0.1'" in err and "0.1.0 (yanked)" in err


def test_locked_and_frozen_with_a_changed_range(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    assert publish(tmp_path, capsys, skills("0.2.0", 0.7))[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app())
    assert cli(capsys, "lock", path)[0] == 0
    path.write_text(app("^0.2"))
    code, _, err = cli(capsys, "build", path, "--locked", "-q")
    assert code == 1 and "dependency 'skills' resolves to 0.2.0 (locked: 0.1.0)" in err
    code, _, err = cli(capsys, "build", path, "--frozen", "-q")
    assert code == 1 and "dependency skills (^0.2) is not in the lock" in err


def test_frozen_never_downloads_a_dependency(tiny_hub, team, tmp_path, capsys, monkeypatch):
    assert publish(tmp_path, capsys, skills())[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app())
    assert cli(capsys, "lock", path)[0] == 0
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "fresh"))
    code, _, err = cli(capsys, "build", path, "--frozen", "-q")
    assert code == 1 and "--frozen never downloads" in err


def test_transitive_dependencies_and_conflicts(tiny_hub, team, tmp_path, capsys):
    for v, w in (("0.1.0", 0.5), ("0.2.0", 0.7)):
        assert publish(tmp_path, capsys, skills(v, w))[0] == 0
    # `mid` depends on skills ^0.2 and re-exports its step
    mid = app("^0.2", name="mid").replace("[steps.final]", "[steps.mid]")
    assert publish(tmp_path, capsys, mid, name="mid.toml")[0] == 0
    top = tmp_path / "top.toml"
    top.write_text(
        '[package]\nname = "top"\nversion = "0.1.0"\n[dependencies]\nmid = "^0.1"\n'
        '[sources]\nmid = { dependency = "mid", step = "mid" }\n'
        '[steps.out]\nmethod = "passthrough"\ninputs = ["mid"]\n'
    )
    deps = install_dependencies(load_recipe(top), Settings())
    assert {n: p.version for n, p in deps.picks.items()} == {"mid": "0.1.0", "skills": "0.2.0"}
    assert cli(capsys, "lock", top)[0] == 0
    assert set(read_lock(tmp_path / "top.lock").dependencies) == {"mid", "skills"}

    # top also asks for skills ^0.1 directly: no version satisfies both
    top.write_text(top.read_text().replace('mid = "^0.1"\n', 'mid = "^0.1"\nskills = "^0.1"\n'))
    with pytest.raises(DependencyConflict) as info:
        install_dependencies(load_recipe(top), Settings())
    e = info.value
    assert e.package == "skills" and {e.first, e.second} == {("top.toml", "^0.1"), ("mid@0.1.0", "^0.2")}
    code, _, err = cli(capsys, "lock", top)
    assert code == 1 and "no version of skills satisfies both" in err and "required by mid@0.1.0" in err


def test_dependency_errors_are_located(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app().replace('step = "skills"', 'step = "skils"'))
    code, _, err = cli(capsys, "build", path, "-q")
    assert code == 1 and f"{path}:10: sources.skills.step: " in err and "has no step 'skils'" in err
    path.write_text(app().replace('dependency = "skills"', 'dependency = "skill"'))
    code, _, err = cli(capsys, "build", path, "-q")
    assert code == 1 and "sources.skills.dependency: 'skill' is not in [dependencies]" in err
    path.write_text(app(rng="latest"))
    code, _, err = cli(capsys, "build", path, "-q")
    assert code == 1 and "dependencies.skills: not a version range: 'latest'" in err


def test_no_registry_configured(tmp_path, capsys):
    path = tmp_path / "app.toml"
    path.write_text(app())
    code, _, err = cli(capsys, "lock", path)
    assert code == 1 and "no registry is configured" in err and "mergepkg registry add" in err


def test_registry_add_list_remove(team, tmp_path, capsys):
    code, _, err = cli(capsys, "registry", "add", "team", team)
    assert code == 1 and "already configured" in err
    code, _, err = cli(capsys, "registry", "add", "x", tmp_path)
    assert code == 1 and "not a registry folder" in err
    assert cli(capsys, "registry", "add", "web", "http://127.0.0.1:9/")[0] == 0
    code, out, _ = cli(capsys, "registry", "list")
    assert out.index("team") < out.index("web") and "http://127.0.0.1:9" in out
    assert cli(capsys, "registry", "remove", "team")[0] == 0
    code, out, _ = cli(capsys, "registry", "list")
    assert "team" not in out
    code, _, err = cli(capsys, "registry", "remove", "team")
    assert code == 1 and "no registry named 'team'" in err


def test_add_registry_checks_the_name_and_its_token_variable(tmp_path):
    """The library call `registry add` makes (its checks were in the CLI alone)."""
    settings = Settings(home=tmp_path / "home")
    new_registry(tmp_path / "r")
    reg = add_registry(settings, "my-team", str(tmp_path / "r"), "secret")
    assert configured(settings) == [reg] and reg.url == str((tmp_path / "r").resolve())
    with pytest.raises(RegistryError, match="invalid registry name"):
        add_registry(settings, "../x", str(tmp_path / "r"))
    with pytest.raises(RegistryError, match="would read one token variable, MERGEPKG_TOKEN_MY_TEAM"):
        add_registry(settings, "my_team", str(tmp_path / "r"))
    assert configured(settings) == [reg]


def test_recipe_dependency_table_forms():
    r = parse_recipe(
        '[package]\nname = "x"\nversion = "0.1.0"\n[dependencies]\nmy_pkg = "^1"\n'
        'b = { version = ">=1.0, <2", registry = "team" }\n'
        '[sources]\nm = { dependency = "my-pkg", step = "s" }\n'
        '[steps.o]\nmethod = "passthrough"\ninputs = ["m"]\n',
        "x.toml",
    )
    assert r.dependencies["my-pkg"].range == "^1" and r.dependencies["b"].registry == "team"
    assert r.sources["m"].dependency == "my-pkg" and r.sources["m"].label == "my-pkg:s"
    with pytest.raises(PublishError):
        from mergepkg.registry.folder import parse_published

        parse_published(b'[package]\nname="x"\nversion="0.1.0"\n[sources]\na = { path = "." }\n', "up.toml")


# -- the shipped example index -----------------------------------------------------------
def test_shipped_registry_is_consistent(capsys):
    """registry/: every file matches its entry, every recipe parses, plans and resolves
    its dependencies from this folder alone, and packages.json agrees with the index."""
    import hashlib
    from pathlib import Path

    from mergepkg.recipe.flatten import flatten
    from mergepkg.recipe.plan import make_plan
    from mergepkg.registry.folder import RegistryFolder
    from mergepkg.registry.index import summary

    root = Path(__file__).parents[2] / "registry"
    folder = RegistryFolder(root)
    assert folder.config()["format"] == 1
    assert cli(capsys, "registry", "add", "examples", root)[0] == 0
    packages = json.loads((root / "packages.json").read_text())["packages"]
    assert len(packages) >= 4 and any(d for d in packages if "llama3" in d) and any("mistral" in d for d in packages)
    for name in packages:
        entries = folder.entries(name)
        assert packages[name] == summary(entries)
        for e in entries:
            data = (root / "recipes" / name / f"{e.version}.toml").read_bytes()
            assert hashlib.sha256(data).hexdigest() == e.sha256
            recipe = load_recipe(root / "recipes" / name / f"{e.version}.toml")
            assert (canonical_name(recipe.name), recipe.version) == (name, e.version)
            assert all(s.hf or s.dependency for s in recipe.sources.values())
            deps = install_dependencies(recipe, Settings())
            assert make_plan(flatten(recipe, bind=deps.bind)).order


def test_publish_refuses_a_stale_lock(tiny_hub, team, tmp_path, capsys):
    """Its keys are not the recipe's: a `--locked` build of the package would fail, naming
    a file its user cannot fix."""
    path = tmp_path / "published/0.1.0/recipe.toml"
    path.parent.mkdir(parents=True)
    path.write_text(skills())
    assert cli(capsys, "lock", path)[0] == 0
    path.write_text(skills().replace('ft1 = { hf = "tiny/ft1" }', 'ft1 = { hf = "tiny/ft3" }'))  # not relocked
    code, _, err = cli(capsys, "publish", path, "-r", "team")
    assert code == 1 and "recipe.lock is out of date" in err and "mergepkg lock recipe.toml" in err
    assert not (team / "index/skills.jsonl").exists()
    assert cli(capsys, "lock", path)[0] == 0
    assert cli(capsys, "publish", path, "-r", "team")[0] == 0
    (entry,) = read_index((team / "index/skills.jsonl").read_text(), "index")
    assert (
        entry.sources["ft1"] == f"tiny/ft3@{tiny_hub['ft3']}"
        and entry.sources["base"] == f"tiny/base@{tiny_hub['base']}"
    )


def test_a_damaged_packages_json_is_rebuilt_from_the_index(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    assert publish(tmp_path, capsys, skills(name="other"), name="o.toml")[0] == 0
    (team / "packages.json").write_text("[not json")
    assert publish(tmp_path, capsys, skills("0.2.0"))[0] == 0
    packages = json.loads((team / "packages.json").read_text())["packages"]
    assert packages["skills"]["latest"] == "0.2.0" and packages["other"]["latest"] == "0.1.0"


def test_publishing_again_finishes_a_publish_killed_after_the_index(tiny_hub, team, tmp_path, capsys, monkeypatch):
    """Killed between the index and packages.json, a publish left the package unsearchable
    for good: the same bytes again were "already published" and wrote nothing."""
    import mergepkg.registry.folder as folder
    from mergepkg.registry import audit

    class Killed(BaseException):
        pass

    real = folder._write

    def dies_after_the_index(path, data):
        real(path, data)
        if str(path).endswith(".jsonl"):
            raise Killed

    monkeypatch.setattr(folder, "_write", dies_after_the_index)
    with pytest.raises(Killed):
        publish(tmp_path, capsys, skills())
    monkeypatch.setattr(folder, "_write", real)
    assert json.loads((team / "packages.json").read_text())["packages"] == {}
    assert audit.read(team / ".mergepkg") == []
    code, _, err = publish(tmp_path, capsys, skills())
    assert code == 0 and "already published" in err
    assert json.loads((team / "packages.json").read_text())["packages"]["skills"]["latest"] == "0.1.0"
    assert [(r["action"], r["name"], r["version"]) for r in audit.read(team / ".mergepkg")] == [
        ("publish", "skills", "0.1.0")
    ]
    code, out, err = cli(capsys, "search", "skills")
    assert code == 0 and "1 packages match" in out + err
    stamp = (team / "packages.json").stat().st_mtime_ns
    assert publish(tmp_path, capsys, skills())[0] == 0  # an intact registry: nothing written
    assert (team / "packages.json").stat().st_mtime_ns == stamp and len(audit.read(team / ".mergepkg")) == 1


def test_publishing_again_adds_an_audit_line_a_kill_after_packages_json_left_out(
    tiny_hub, team, tmp_path, capsys, monkeypatch
):
    """packages.json written, the log not: the package was listed, so `_finish` returned
    before it looked at the log. A registry without a log (a git checkout) gets none."""
    from mergepkg.registry import audit

    assert publish(tmp_path, capsys, skills(version="0.1.0"))[0] == 0

    class Killed(BaseException):
        pass

    def killed(*args, **kwargs):
        raise Killed

    with monkeypatch.context() as m, pytest.raises(Killed):
        m.setattr(audit, "record", killed)
        publish(tmp_path, capsys, skills(version="0.2.0"))
    assert [r["version"] for r in audit.read(team / ".mergepkg")] == ["0.1.0"]
    assert publish(tmp_path, capsys, skills(version="0.2.0"))[0] == 0
    assert [r["version"] for r in audit.read(team / ".mergepkg")] == ["0.1.0", "0.2.0"]
    (team / ".mergepkg" / audit.FILE).unlink()  # as a clone of the registry's git repository has it
    assert publish(tmp_path, capsys, skills(version="0.2.0"))[0] == 0
    assert not (team / ".mergepkg" / audit.FILE).exists()


def test_a_lock_resolved_against_another_checkout_still_builds(tiny_hub, team, tmp_path, capsys, monkeypatch):
    """A git-hosted registry: each reader's checkout is elsewhere; the lock names the
    writer's folder, and the sha256 decides which bytes are right."""
    import shutil

    assert publish(tmp_path, capsys, skills())[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app())
    assert cli(capsys, "lock", path)[0] == 0
    clone = tmp_path / "clone"
    shutil.copytree(team, clone)
    shutil.rmtree(team)
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "reader"))
    assert cli(capsys, "registry", "add", "team", clone)[0] == 0
    code, _, err = cli(capsys, "build", path, "--locked", "-q", "--out", tmp_path / "out")
    assert code == 0, err
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "nobody"))
    code, _, err = cli(capsys, "build", path, "--locked", "-q", "--out", tmp_path / "out")
    assert code == 1 and "no configured registry has skills@0.1.0" in err and "registry add" in err


def test_malformed_dependency_in_a_lock_is_a_located_error(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    path = tmp_path / "app.toml"
    path.write_text(app())
    assert cli(capsys, "lock", path)[0] == 0
    lock = tmp_path / "app.lock"
    lock.write_text(lock.read_text().replace('version = "0.1.0"', 'version = "latest"'))
    code, _, err = cli(capsys, "build", path, "-q")
    assert code == 1 and f"{lock}: dependency: malformed lock: dependency 'skills' 'latest'" in err


def test_lock_upgrade_moves_an_indirect_dependency(tiny_hub, team, tmp_path, capsys):
    assert publish(tmp_path, capsys, skills())[0] == 0
    mid = app(name="mid").replace("[steps.final]", "[steps.mid]")
    assert publish(tmp_path, capsys, mid, name="mid.toml")[0] == 0
    top = tmp_path / "top.toml"
    top.write_text(
        '[package]\nname = "top"\nversion = "0.1.0"\n[dependencies]\nmid = "^0.1"\n'
        '[sources]\nmid = { dependency = "mid", step = "mid" }\n'
        '[steps.out]\nmethod = "passthrough"\ninputs = ["mid"]\n'
    )
    assert cli(capsys, "lock", top)[0] == 0
    assert publish(tmp_path, capsys, skills("0.1.3", 0.4))[0] == 0
    assert cli(capsys, "lock", top)[0] == 0
    assert read_lock(tmp_path / "top.lock").dependencies["skills"].version == "0.1.0"
    code, _, err = cli(capsys, "lock", top, "--upgrade", "skills")
    assert code == 0, err
    assert read_lock(tmp_path / "top.lock").dependencies["skills"].version == "0.1.3"


def test_build_of_neither_a_file_nor_a_package(tmp_path, capsys, team):
    code, _, err = cli(capsys, "build", "mything")
    assert code == 1 and "no recipe file 'mything', and no published package: no package named 'mything'" in err
    assert "Traceback" not in err


def test_a_package_that_would_depend_on_itself_through_another_is_refused(tiny_hub, team, tmp_path, capsys):
    """skills 0.1.1 using app's step, while app uses skills ^0.1: once published, app would pick it."""
    assert publish(tmp_path, capsys, skills())[0] == 0
    assert publish(tmp_path, capsys, app(), name="app.toml")[0] == 0
    circular = skills(
        "0.1.1",
        deps='[dependencies]\napp = "^0.1"\n',
        extra='final = { dependency = "app", step = "final" }\n',
    )
    code, _, err = publish(tmp_path, capsys, circular)
    assert code == 1 and "skills would depend on itself" in err and "Traceback" not in err
    assert "0.1.1" not in (team / "index" / "skills.jsonl").read_text()


def test_an_imported_recipe_file_s_dependencies_are_resolved_with_the_importer_s(tiny_hub, team, tmp_path, capsys):
    """inner.toml uses skills ^0.2; outer.toml imports its step. outer's own ^0.1 once won
    silently (inner's step built over skills 0.1.0, under a key inner never makes), and a
    package only the imported file named was an error."""
    assert publish(tmp_path, capsys, skills())[0] == 0
    assert publish(tmp_path, capsys, skills("0.2.0", weight=0.25))[0] == 0
    inner, outer = tmp_path / "inner.toml", tmp_path / "outer.toml"
    inner.write_text(app("^0.2", name="inner"))

    def write_outer(deps: str) -> None:
        outer.write_text(
            f'[package]\nname = "outer"\nversion = "0.1.0"\n{deps}[sources]\n'
            'imp = { recipe = "inner.toml", step = "final" }\nft1 = { hf = "tiny/ft1" }\n[steps.top]\n'
            'method = "linear"\ninputs = [{ model = "imp", weight = 0.5 }, { model = "ft1", weight = 0.5 }]\n'
        )

    write_outer('[dependencies]\nskills = "^0.1"\n')
    code, _, err = cli(capsys, "lock", outer)
    assert code == 1 and "Traceback" not in err, err
    assert (
        "no version of skills satisfies both '^0.1' (required by outer.toml) and '^0.2' (required by inner.toml)" in err
    )
    write_outer("")
    assert cli(capsys, "lock", outer)[0] == 0
    assert cli(capsys, "lock", inner)[0] == 0
    mine, theirs = read_lock(tmp_path / "outer.lock"), read_lock(tmp_path / "inner.lock")
    assert mine is not None and theirs is not None
    assert mine.dependencies["skills"].version == theirs.dependencies["skills"].version == "0.2.0"
    assert mine.steps["imp::final"].key == theirs.steps["final"].key

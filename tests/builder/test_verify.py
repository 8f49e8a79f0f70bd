"""`mergepkg verify` (builder/verify.py): the store checked against the lock, or every
locked step rebuilt in a scratch store."""

from __future__ import annotations

import pytest
from registries import app, new_registry, skills

from mergepkg.builder.build import build
from mergepkg.builder.verify import verify
from mergepkg.recipe.parse import load_recipe
from mergepkg.registry.client import add_registry
from mergepkg.registry.folder import parse_published
from mergepkg.settings import Settings
from mergepkg.store.session import Session


def test_rebuild_reads_the_installed_dependencies_and_stores_nothing_in_the_users_store(tiny_hub, tmp_path):
    """A recipe with [dependencies]: the scratch store is empty, but the packages the lock
    installed are the user's (a scratch home without them failed: "skills@0.1.0 is locked
    but not installed, and --frozen never downloads")."""
    registry = tmp_path / "registry"
    folder = new_registry(registry)
    data = skills().encode()
    folder.publish(parse_published(data, "skills.toml"), data)
    session = Session(Settings())
    add_registry(session.settings, "team", str(registry))
    path = tmp_path / "app.toml"
    path.write_text(app())
    built = build(load_recipe(path), session)
    stored = sorted(p.name for p in (session.settings.home / "store").iterdir())
    (registry / "index" / "skills.jsonl").unlink()  # the rebuild reads no registry: the installed file

    checks = verify(load_recipe(path), session, rebuild=True)
    assert {c.step: c.status for c in checks} == {"final": "ok", "skills::skills": "ok"}
    assert {c.step: c.actual for c in checks} == {n: a.digest for n, a in built.artifacts.items()}
    assert sorted(p.name for p in (session.settings.home / "store").iterdir()) == stored


def test_the_scratch_home_is_made_in_this_homes_tmp_where_a_later_build_removes_it(recipe_file, monkeypatch):
    """It was made in the system's temp folder: a `verify --rebuild` killed there left a
    whole scratch store that nothing ever removed."""
    import mergepkg.builder.verify as verify_module

    session = Session(Settings())
    path = recipe_file('[steps.s]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1.0 }]\n')
    build(load_recipe(path), session)
    scratch = []

    def killed(home, *args):
        scratch.append(home)
        raise KeyboardInterrupt  # and the process dies before its cleanup: the folder stays

    monkeypatch.setattr(verify_module, "_rebuild_in", killed)
    with pytest.raises(KeyboardInterrupt):
        verify(load_recipe(path), session, rebuild=True)
    (home,) = scratch
    assert home.parent == session.store.tmp and home.is_dir()
    assert session.store.clean_tmp() == [home] and not home.exists()  # the next build's cleaning

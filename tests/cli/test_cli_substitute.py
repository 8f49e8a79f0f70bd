"""`build`, `plan`, `verify` and `build NAME` substituting from a real S3-compatible
server (moto's, on 127.0.0.1): a recipe built and pushed in home A, then a fresh home B
without the source models gets the lock's digests from the remote alone."""

from __future__ import annotations

import shutil

import pytest
from helpers import cli
from registries import new_registry, skills
from remotes import S3_ENV, make_bucket, moto_server, s3_options

from mergepkg.builder.build import build
from mergepkg.lockfile import lock_path, read_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.remote.config import add_remote
from mergepkg.remote.sync import open_remote, push_artifact
from mergepkg.settings import Settings
from mergepkg.store.session import Session

pytestmark = pytest.mark.slow
URL = "s3://merges/mergepkg"


@pytest.fixture
def s3(monkeypatch):
    """The moto server, its bucket, and AWS_* variables that reach it."""
    with moto_server() as endpoint:
        for k, v in S3_ENV.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        make_bucket(endpoint, "merges")
        yield endpoint


def push_all(endpoint: str, report) -> None:
    remote = open_remote(URL, **s3_options(endpoint))
    for art in report.artifacts.values():
        push_artifact(remote, art)


def test_fresh_home_builds_locked_from_s3_with_the_sources_gone(s3, models, tmp_path, monkeypatch, capsys):
    folders = {n: tmp_path / "models" / n for n in ("base", "ft1", "ft2")}
    for n, f in folders.items():
        shutil.copytree(models[n], f)
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        "\n".join(
            f'{line.split(" =")[0]} = {{ path = "models/{line.split(" =")[0]}" }}' if "tiny/" in line else line
            for line in skills().splitlines()
        )
    )
    report = build(load_recipe(recipe), Session(Settings(home=tmp_path / "home-a")))
    push_all(s3, report)
    locked = read_lock(lock_path(load_recipe(recipe)))
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "home-b"))
    add_remote(Settings(), "team", URL)
    for f in folders.values():
        shutil.rmtree(f)
    code, out, err = cli(capsys, "plan", recipe)
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if "skills" in ln and "task_arithmetic" in ln)
    assert "remote team: pulls" in line, out  # the rest of the line: see test_substitute
    assert "1 from remotes" in err and "0 to build" in err, err
    code, out, err = cli(capsys, "build", recipe, "--locked", "-q", "--out", tmp_path / "out")
    assert code == 0, err
    assert "pulled skills" in err and "0 built" in err, err
    assert read_lock(lock_path(load_recipe(recipe))) == locked
    code, out, err = cli(capsys, "verify", recipe)
    assert code == 0 and "ok" in out, out + err


def test_build_name_downloads_the_published_merge_from_the_packages_remote(s3, tiny_hub, tmp_path, monkeypatch, capsys):
    registry = tmp_path / "registry"
    new_registry(registry)
    recipe = tmp_path / "pub" / "skills.toml"
    recipe.parent.mkdir()
    recipe.write_text(skills(deps=f'remote = "{URL}"\n'))
    home_a = tmp_path / "home-a"
    monkeypatch.setenv("MERGEPKG_HOME", str(home_a))
    assert cli(capsys, "registry", "add", "team", registry)[0] == 0
    code, _, err = cli(capsys, "build", recipe, "-q", "--out", tmp_path / "out-a")
    assert code == 0, err
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    code, _, err = cli(capsys, "publish", recipe, "--registry", "team", "--push", URL)
    assert code == 0 and "pushed" in err, err
    published = (registry / "index" / "skills.jsonl").read_text()
    assert f'"remote":"{URL}"' in published and '"lock":"' in published
    # a fresh machine: another home, and a Hugging Face cache without the tiny models
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "home-b"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    assert cli(capsys, "registry", "add", "team", registry)[0] == 0
    code, _, err = cli(capsys, "build", "skills", "-q", "--out", tmp_path / "out-b")
    assert code == 0, err
    assert "pulled skills" in err and "0 built" in err, err
    assert (tmp_path / "out-b" / "config.json").is_file()

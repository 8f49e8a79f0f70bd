"""registries.toml and the kept copies of registry files, read as remotes.toml is: what is
edited there by hand that is no registry list is one error located at the file, through
every command that reads it (a KeyError, AttributeError or UnicodeDecodeError before)."""

from __future__ import annotations

import pytest
from helpers import cli
from registries import new_registry

from mergepkg.registry.client import RegistryConfigError, configured
from mergepkg.settings import Settings


@pytest.mark.parametrize(
    ("text", "key", "message"),
    [
        ('[registries.x]\nname = "a"\n', "registries.x", "expected a [registries.NAME] table with a url string"),
        ("[registries.x]\nurl = 3\n", "registries.x", "expected a [registries.NAME] table with a url string"),
        ("registries = 5\n", "registries", "expected [registries.NAME] tables with a url"),
        ('registries = { x = "a" }\n', "registries.x", "expected a [registries.NAME] table with a url string"),
        ('[registries.x]\nurl = "/r"\ntoken = 3\n', "registries.x.token", "expected a string"),
    ],
)
@pytest.mark.parametrize("args", [["registry", "list"], ["search", "tiny"], ["info", "skills"], ["build", "skills"]])
def test_a_registry_list_of_the_wrong_shape_is_located_there(
    text, key, message, args, mergepkg_home, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # `build skills`: no file of that name, so a package
    path = mergepkg_home / "registries.toml"
    mergepkg_home.mkdir()
    path.write_text(text)
    code, _, err = cli(capsys, *args)
    assert code == 1
    assert f"error: {path}: {key}: {message}" in err, err
    assert "hint: fix or delete it, then `mergepkg registry add`" in err


def test_a_broken_registry_list_is_no_registry_error(mergepkg_home):
    """`build NAME` takes a RegistryError to mean "no such package" and drops its place."""
    mergepkg_home.mkdir()
    (mergepkg_home / "registries.toml").write_text("registries = [")
    with pytest.raises(RegistryConfigError, match="cannot read the registry list") as e:
        configured(Settings())
    assert e.value.file == str(mergepkg_home / "registries.toml")


def test_a_registry_list_that_is_right_still_reads(mergepkg_home, tmp_path, capsys):
    root = tmp_path / "registry"
    new_registry(root)
    assert cli(capsys, "registry", "add", "team", root, "--token", "t")[0] == 0
    assert [(r.name, r.url, r.token) for r in configured(Settings())] == [("team", str(root), "t")]


def test_a_kept_copy_that_cannot_be_read_is_located(mergepkg_home, capsys):
    """registry-cache/ a file (or the home's kept file a folder): a NotADirectoryError before."""
    assert cli(capsys, "registry", "add", "web", "http://127.0.0.1:9")[0] == 0
    (mergepkg_home / "registry-cache").write_text("")
    code, _, err = cli(capsys, "search", "tiny", "--offline")
    assert code == 1
    assert f"error: {mergepkg_home / 'registry-cache'}/" in err and "cannot use the kept copy" in err, err
    assert f"hint: delete {mergepkg_home / 'registry-cache'}" in err

"""The home and the config files in it, through the CLI: whatever stops one being read is
one located error, never a traceback (a home that is a file used to give the store's
commands a clean line and the registry and remote commands a NotADirectoryError)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cli
from registries import new_registry

HOME_IS_A_FILE = "MERGEPKG_HOME is not a folder"


@pytest.fixture
def registry(tmp_path) -> Path:
    root = tmp_path / "registry"
    new_registry(root)
    return root


@pytest.mark.parametrize(
    "args",
    [
        ["registry", "list"],
        ["registry", "add", "team", "{registry}"],
        ["registry", "remove", "team"],
        ["remote", "list"],
        ["remote", "add", "team", "{tmp}"],
        ["remote", "keygen", "k"],
        ["remote", "remove", "team"],
        ["remote", "untrust", "k"],
        ["search", "tiny"],
        ["info", "skills"],
        ["install", "skills"],
        ["build", "skills"],
        ["cache", "gc"],
    ],
)
def test_a_home_that_is_a_file_is_the_stores_one_line_for_every_command(
    args, mergepkg_home, registry, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    mergepkg_home.write_text("not a folder")
    args = [a.format(registry=registry, tmp=tmp_path) for a in args]
    code, _, err = cli(capsys, *args)
    assert code == 1
    assert f"error: {mergepkg_home}: {HOME_IS_A_FILE}" in err and "hint: point MERGEPKG_HOME at a folder" in err


def test_a_home_under_a_file_is_the_same_error(mergepkg_home, tmp_path, capsys, monkeypatch):
    """NotADirectoryError, not FileExistsError: the file is above the home."""
    mergepkg_home.write_text("")
    monkeypatch.setenv("MERGEPKG_HOME", str(mergepkg_home / "sub"))
    for args in (["registry", "list"], ["remote", "keygen", "k"], ["remote", "add", "r", str(tmp_path)]):
        code, _, err = cli(capsys, *args)
        assert code == 1 and HOME_IS_A_FILE in err, args


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc, where no folder can be made")
@pytest.mark.parametrize("args", [["registry", "add", "team", "{registry}"], ["remote", "keygen", "k"]])
def test_a_home_that_cannot_be_made_is_one_located_error(args, registry, capsys, monkeypatch):
    monkeypatch.setenv("MERGEPKG_HOME", "/proc/mergepkg-home")
    code, _, err = cli(capsys, *[a.format(registry=registry) for a in args])
    assert code == 1 and "error: /proc/mergepkg-home: cannot make MERGEPKG_HOME" in err


@pytest.mark.parametrize(
    ("name", "args", "what"),
    [("registries.toml", ["registry", "list"], "registry list"), ("remotes.toml", ["remote", "list"], "remote list")],
)
def test_a_config_file_that_is_a_folder_or_not_utf8_is_located_there(name, args, what, mergepkg_home, capsys):
    path = mergepkg_home / name
    path.mkdir(parents=True)
    code, _, err = cli(capsys, *args)
    assert code == 1 and f"error: {path}: cannot read the {what}: it is a folder, not a file" in err
    path.rmdir()
    path.write_bytes(b"\xff\xfe[x]\n")
    code, _, err = cli(capsys, *args)
    assert code == 1 and f"error: {path}: cannot read the {what}: not UTF-8 text (byte 0)" in err
    assert "hint: fix or delete it" in err


def test_a_remote_list_that_is_a_folder_stops_a_build_with_one_line(mergepkg_home, recipe_file, capsys):
    """`build` reads remotes.toml for substitutes: an IsADirectoryError's traceback before."""
    (mergepkg_home / "remotes.toml").mkdir(parents=True)
    recipe = recipe_file("""
        [steps.m]
        method = "linear"
        inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]
        """)
    code, _, err = cli(capsys, "build", recipe)
    assert code == 1 and "remotes.toml: cannot read the remote list: it is a folder, not a file" in err, err


def test_a_keys_entry_that_is_a_file_is_located(mergepkg_home, capsys):
    mergepkg_home.mkdir()
    (mergepkg_home / "keys").write_text("")
    code, _, err = cli(capsys, "remote", "keygen", "k")
    assert code == 1 and f"error: {mergepkg_home / 'keys'}: expected the folder of signing keys, found a file" in err

"""registries.toml and the kept copies of registry files, read as remotes.toml is: what is
edited there by hand that is no registry list is one error located at the file, through
every command that reads it (a KeyError, AttributeError or UnicodeDecodeError before).
And how much of a registry's file is read: never past its limit, from a folder or over
HTTP, and what is refused is never kept."""

from __future__ import annotations

import http.server
import threading

import pytest
from helpers import cli
from registries import new_registry, serving, skills

from mergepkg.errors import RegistryError
from mergepkg.recipe.parse import parse_recipe
from mergepkg.registry import client
from mergepkg.registry.client import Client, Registry, RegistryConfigError, configured
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


# -- how much of a registry's file is read ---------------------------------------------------
LIMIT = 4096


@pytest.fixture
def padded(tmp_path, monkeypatch):
    """A registry folder whose index of `skills` holds one valid entry and blank lines past
    LIMIT (MAX_FILE_BYTES lowered to it): a file any reader before would have taken whole."""
    monkeypatch.setattr(client, "MAX_FILE_BYTES", LIMIT)
    folder = new_registry(tmp_path / "registry")
    text = skills()
    folder.publish(parse_recipe(text, tmp_path / "skills.toml"), text.encode())
    index = folder.root / "index/skills.jsonl"
    index.write_text(index.read_text() + "\n" * LIMIT)
    return folder.root


def test_a_folder_registry_s_file_past_the_limit_is_refused(padded, tmp_path):
    reg = Registry("team", str(padded))
    with pytest.raises(RegistryError, match=f"team has more than {LIMIT:,} bytes in this file") as e:
        Client(Settings(), [reg]).entries("skills")
    assert e.value.file == f"{padded}/index/skills.jsonl"
    (padded / "index/zero.jsonl").symlink_to("/dev/zero")  # a MemoryError traceback before, or the machine's memory
    with pytest.raises(RegistryError, match="more than 4,096 bytes"):
        Client(Settings(), [reg]).entries("zero")


def test_an_http_registry_s_file_past_the_limit_is_refused_and_not_kept(padded, mergepkg_home):
    with serving(padded) as url, pytest.raises(RegistryError, match=f"web has more than {LIMIT:,} bytes") as e:
        Client(Settings(), [Registry("web", url)]).entries("skills")
    assert e.value.file == f"{url}/index/skills.jsonl"
    assert not list((mergepkg_home / "registry-cache").rglob("skills.jsonl"))


def test_a_streamed_body_is_read_only_to_the_limit(monkeypatch, mergepkg_home):
    """A server streaming a body with no length: `mergepkg info` once read 300 MB into
    memory (655 MB at its peak) and kept them in registry-cache/."""
    monkeypatch.setattr(client, "MAX_FILE_BYTES", LIMIT)
    sent = []

    class Endless(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # no Content-Length: the body ends when the connection does

        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(64):  # 64 MiB at most, so a reader with no limit ends too
                    self.wfile.write(b"x" * 2**20)
                    sent.append(1)
            except OSError:
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Endless)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        with pytest.raises(RegistryError, match=f"web has more than {LIMIT:,} bytes"):
            Client(Settings(), [Registry("web", url)]).entries("skills")
    finally:
        server.shutdown()
        server.server_close()
    assert not list((mergepkg_home / "registry-cache").rglob("skills.jsonl")) and len(sent) < 64


def test_a_recipe_file_past_the_recipe_limit_is_refused(tmp_path, monkeypatch):
    """Publishing refuses a recipe over MAX_RECIPE_BYTES: a registry serving one is refused too."""
    folder = new_registry(tmp_path / "registry")
    text = skills()
    entry, _ = folder.publish(parse_recipe(text, tmp_path / "skills.toml"), text.encode())
    monkeypatch.setattr(client, "MAX_RECIPE_BYTES", len(text) - 1)
    reg = Registry("team", str(folder.root))
    with pytest.raises(RegistryError, match=f"more than {len(text) - 1:,} bytes"):
        Client(Settings(), [reg]).recipe_bytes(reg, "skills", "0.1.0", entry.sha256)

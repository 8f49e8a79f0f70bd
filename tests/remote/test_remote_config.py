"""Configured remotes and trusted keys in `$MERGEPKG_HOME/remotes.toml` (issue 16)."""

from __future__ import annotations

import pytest

from mergepkg.remote import config
from mergepkg.remote.config import (
    add_remote,
    configured,
    get_remote,
    normalize_url,
    remove_remote,
    trust_key,
    trusted_keys,
    untrust_key,
)
from mergepkg.remote.errors import RemoteConfigError
from mergepkg.remote.sign import generate_key
from mergepkg.settings import Settings


def test_remotes_are_added_listed_and_removed_in_order(tmp_path, mergepkg_home):
    settings = Settings()
    shared = tmp_path / "shared"
    shared.mkdir()
    add_remote(settings, "disk", str(shared))
    add_remote(settings, "s3", "s3://bucket//cache/")
    add_remote(settings, "hub", "hf://datasets/team/builds")
    assert [(r.name, r.url) for r in configured(settings)] == [
        ("disk", f"file://{shared}"),
        ("s3", "s3://bucket/cache"),
        ("hub", "hf://datasets/team/builds"),
    ]
    text = (mergepkg_home / "remotes.toml").read_text()
    assert "secret" not in text and "token" not in text  # credentials never here
    assert remove_remote(settings, "s3").url == "s3://bucket/cache"
    assert [r.name for r in configured(settings)] == ["disk", "hub"]
    with pytest.raises(RemoteConfigError, match="no remote named 'dsk'") as e:
        get_remote(settings, "dsk")
    assert e.value.hint == "did you mean 'disk'?" and e.value.file.endswith("remotes.toml")
    with pytest.raises(RemoteConfigError, match="already configured"):
        add_remote(settings, "disk", str(shared))


@pytest.mark.parametrize(
    ("name", "url", "says", "hint"),
    [
        ("../x", "memory://a", "invalid remote name", "letters, digits"),
        ("ok", "s3a://bucket", "unknown remote scheme 's3a'", "did you mean 's3'?"),
        ("ok", "gs://bucket", "unknown remote scheme 'gs'", "expected one of"),
        ("ok", "/no/such/folder", "no such folder", "create it first"),
        ("ok", "s3://", "no bucket", "s3://BUCKET"),
        ("ok", "hf://team", "not a Hub repository URL", "hf://datasets/ORG/NAME"),
        ("ok", "hf://datasets/team/x@main", "not a Hub repository URL", None),
        ("ok", "s3://bucket/../other", "'..' are not allowed", None),
    ],
)
def test_a_bad_name_or_url_is_refused_with_a_hint(mergepkg_home, name, url, says, hint):
    with pytest.raises(RemoteConfigError, match=says.replace("(", r"\(")) as e:
        add_remote(Settings(), name, url)
    assert hint is None or hint in (e.value.hint or "")
    assert not (mergepkg_home / "remotes.toml").exists()


def test_a_scheme_whose_backend_is_missing_names_the_extra(monkeypatch):
    import fsspec

    def missing(protocol):
        raise ImportError("Install s3fs to access S3")

    monkeypatch.setattr(fsspec, "get_filesystem_class", missing)
    with pytest.raises(RemoteConfigError, match="Install s3fs") as e:
        normalize_url("s3://bucket")
    assert e.value.hint == "install the remote extra: pip install 'mergepkg[remote]'"


def test_trusted_keys_are_kept_beside_the_remotes(mergepkg_home):
    settings = Settings()
    add_remote(settings, "mem", "memory://x")
    team, other = generate_key(settings, "team"), generate_key(settings, "other")
    assert trust_key(settings, team.public) == "team"
    trust_key(settings, team.public)  # twice: once
    trust_key(settings, other.public)
    assert trusted_keys(settings) == [team.public, other.public]
    assert [r.name for r in configured(settings)] == ["mem"]
    impostor = generate_key(settings, "x2").public.replace("x2:", "team:")
    with pytest.raises(RemoteConfigError, match="another key named 'team'"):
        trust_key(settings, impostor)
    untrust_key(settings, "team")
    assert trusted_keys(settings) == [other.public]
    with pytest.raises(RemoteConfigError, match="no trusted key named 'team'"):
        untrust_key(settings, "team")


@pytest.mark.parametrize("text", ["remotes = [", "remotes = 3", "[remotes.a]\nurl = 3", 'trusted-public-keys = "k"'])
def test_a_broken_remote_list_is_a_located_error(mergepkg_home, text):
    mergepkg_home.mkdir(parents=True)
    (mergepkg_home / "remotes.toml").write_text(text)
    with pytest.raises(RemoteConfigError) as e:
        config.configured(Settings())
    assert e.value.file == str(mergepkg_home / "remotes.toml")


def test_a_percent_in_a_folder_path_is_kept_and_normalising_again_changes_nothing(tmp_path, mergepkg_home, monkeypatch):
    """A plain path is never URL-decoded, a file URL once: `pct%41x` used to become
    `pctAx` (another folder, or none), and a stored URL was decoded again when opened."""
    from mergepkg.remote.sync import open_remote

    odd = tmp_path / "pct%41x"
    odd.mkdir()
    (tmp_path / "pctAx").mkdir()  # the folder a decoding would have picked, silently
    monkeypatch.chdir(tmp_path)
    settings = Settings()
    stored = {
        add_remote(settings, "plain", "pct%41x").url,
        add_remote(settings, "absolute", str(odd)).url,
        add_remote(settings, "url", f"file://{tmp_path}/pct%2541x").url,
    }
    assert len(stored) == 1 and normalize_url(stored.pop()) == get_remote(settings, "url").url
    for r in configured(settings):
        assert open_remote(r.url).root == str(odd)
    assert config.folder_of(get_remote(settings, "url").url) == odd


def test_a_bad_url_or_key_edited_into_the_remote_list_is_located_there(mergepkg_home):
    """Both used to be errors naming neither remotes.toml nor the entry; a bad key can
    still be untrusted."""
    from mergepkg.builder.share import choose_remote

    mergepkg_home.mkdir(parents=True)
    path = mergepkg_home / "remotes.toml"
    path.write_text('trusted-public-keys = ["team:AAAA"]\n\n[remotes.x]\nurl = "ftp://foo"\n')
    with pytest.raises(RemoteConfigError, match="unknown remote scheme 'ftp'") as e:
        choose_remote(Settings(), "x")
    assert (e.value.file, e.value.key) == (str(path), "remotes.x.url")
    with pytest.raises(RemoteConfigError, match="not an ed25519 public key") as e:
        trusted_keys(Settings())
    assert (e.value.file, e.value.key) == (str(path), "trusted-public-keys[0]")
    untrust_key(Settings(), "team")
    assert trusted_keys(Settings()) == []

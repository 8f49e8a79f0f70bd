"""The record a remote keeps per artifact, and ed25519 signatures over it (issue 16)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.remote.errors import Refused, RemoteConfigError, RemoteError
from mergepkg.remote.record import FileEntry, Record, parse_record
from mergepkg.remote.sign import (
    generate_key,
    load_signing_key,
    parse_public_key,
    sign_record,
    trusted_signer,
)
from mergepkg.settings import Settings

ENTRY = {"hash_version": 1, "method": "linear", "weight": 0.5}
KEY = sha256_hex(canonical_json(ENTRY))


def record(**kw) -> Record:
    fields = {
        "key": KEY,
        "entry": ENTRY,
        "digest": "sha256:" + "ab" * 32,
        "files": (FileEntry("config.json", 10, "0" * 64), FileEntry("model.safetensors", 99, "1" * 64)),
        "builder": "me@here",
        "mergepkg": "0.1.0",
        "created": "2026-01-01T00:00:00Z",
    }
    return Record(**{**fields, **kw})


def test_a_record_reads_back_as_written_and_its_bytes_are_canonical():
    r = record()
    assert parse_record(r.to_bytes(), where="memory://x", key=KEY) == r
    assert r.to_bytes() == canonical_json(json.loads(r.to_bytes()))
    assert r.folder == f"artifacts/{KEY}/{r.variant}" and len(r.variant) == 16
    assert record(files=r.files[:1]).variant != r.variant  # other files, another folder


@pytest.mark.parametrize(
    ("change", "at", "says"),
    [
        (lambda d: d.update(key="0" * 64), "key", "is for key"),
        (lambda d: d["entry"].update(weight=0.6), "entry", "does not hash to the key"),
        (lambda d: d["files"][1].update(name="../escape"), "files[1].name", "not a plain file name"),
        (lambda d: d["files"][1].update(name="mergepkg-manifest.json"), "files[1].name", "not a plain file name"),
        (lambda d: d["files"][0].update(size=-1), "files[0].size", "expected a size"),
        (lambda d: d["files"][0].update(sha256="xyz"), "files[0].sha256", "64 hex digits"),
        (lambda d: d["files"].append(dict(d["files"][0])), "files", "listed twice"),
        (lambda d: d.update(files=[]), "files", "non-empty list"),
        (lambda d: d.update(digest="md5:00"), "digest", "sha256"),
        (lambda d: d.update(format=2), "format", "unknown record format"),
        (lambda d: d.update(signatures=[{"key": 1}]), "signatures", "{key, sig}"),
        (lambda d: d.update(extra=1), None, "unknown fields: extra"),
    ],
)
def test_a_malformed_record_is_an_error_naming_the_remote_the_record_and_the_field(change, at, says):
    doc = json.loads(record().to_bytes())
    change(doc)
    with pytest.raises(RemoteError) as e:
        parse_record(json.dumps(doc).encode(), where="s3://bucket/cache", key=KEY)
    assert e.value.file == f"s3://bucket/cache/records/{KEY}.json" and e.value.key == at
    assert says in e.value.message and e.value.hint


@pytest.mark.parametrize("data", [b"", b"{", b"[]", b"null", b"[" * 100_000])
def test_bytes_that_are_no_record_are_an_error(data):
    with pytest.raises(RemoteError):
        parse_record(data, where="file:///r", key=KEY)


def test_a_key_is_saved_private_and_its_signatures_verify_for_those_who_trust_it(mergepkg_home):
    settings = Settings()
    key = generate_key(settings, "team")
    secret = mergepkg_home / "keys" / "team.secret"
    assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600
    assert (mergepkg_home / "keys" / "team.public").read_text().strip() == key.public
    assert load_signing_key(settings, "team") == key and "secret" not in repr(key)
    with pytest.raises(RemoteConfigError, match="exists"):
        generate_key(settings, "team")
    signed = sign_record(record(), key)
    assert parse_record(signed.to_bytes(), where="x", key=KEY) == signed
    assert trusted_signer(signed, [key.public]) == "team"
    assert trusted_signer(record(), [key.public]) is None  # unsigned
    other = generate_key(settings, "other")
    assert trusted_signer(signed, [other.public]) is None  # signed, but by no trusted key
    assert sign_record(signed, key).signatures == signed.signatures  # one signature per key


def test_a_secret_key_file_in_the_current_folder_is_read_by_its_name(mergepkg_home, tmp_path, monkeypatch):
    """`--key alice.secret` is a file here, not the saved key `alice.secret` (it used to be
    looked for as keys/alice.secret.secret); a saved key still wins over a stray file."""
    settings = Settings()
    alice = generate_key(settings, "alice")
    team = generate_key(settings, "team")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "alice.secret").write_text((mergepkg_home / "keys" / "alice.secret").read_text())
    (mergepkg_home / "keys" / "alice.secret").unlink()
    assert load_signing_key(settings, "alice.secret") == alice
    (tmp_path / "team").write_text((tmp_path / "alice.secret").read_text())
    assert load_signing_key(settings, "team") == team
    with pytest.raises(RemoteConfigError, match="cannot read the signing key") as e:
        load_signing_key(settings, "nobody")
    assert e.value.file == str(mergepkg_home / "keys" / "nobody.secret")


def test_a_forged_or_altered_record_is_refused(mergepkg_home):
    settings = Settings()
    key, mallory = generate_key(settings, "team"), generate_key(settings, "mallory")
    signed = sign_record(record(), key)
    altered = Record(**{**signed.__dict__, "digest": "sha256:" + "cd" * 32})
    with pytest.raises(Refused, match="forged or altered"):
        trusted_signer(altered, [key.public], where="memory://r")
    forged = sign_record(record(), mallory)  # mallory's signature under team's name
    forged = Record(
        **{**forged.__dict__, "signatures": ((forged.signatures[0].__class__("team", forged.signatures[0].sig)),)}
    )
    with pytest.raises(Refused, match="'team' does not verify"):
        trusted_signer(forged, [key.public])


@pytest.mark.parametrize("text", ["team", "team:", "team:AAAA", "../x:" + "A" * 44, ":" + "A" * 44])
def test_a_public_key_that_is_not_one_is_a_located_error(text):
    with pytest.raises(RemoteConfigError, match="not an ed25519 public key") as e:
        parse_public_key(text, where="remotes.toml")
    assert e.value.file == "remotes.toml" and "NAME:BASE64" in e.value.hint


def test_every_file_a_build_writes_is_an_artifact_file_and_nothing_else_is():
    """What a pull takes (store.check_names): the names io/writer gives shards (one, a few,
    past 99999), the index, every side file engine/side_files.py writes (the tokenizer
    files a union writes among them); never code, a model card or a recipe."""
    from mergepkg.io.folder import INDEX, SIDE_FILES
    from mergepkg.io.writer import shard_names
    from mergepkg.layout.chat import CONFIG_FILE, LEGACY_FILE, TEMPLATE_FILE
    from mergepkg.layout.vocab import FILES
    from mergepkg.remote.record import is_artifact_file

    written = [*shard_names(1), *shard_names(3), *shard_names(100_001)[-2:], INDEX, *SIDE_FILES, *FILES]
    written += [CONFIG_FILE, LEGACY_FILE, TEMPLATE_FILE]
    assert all(is_artifact_file(n) for n in written), [n for n in written if not is_artifact_file(n)]
    for name in (
        "modeling_evil.py",
        "README.md",
        "mergepkg.toml",
        "pytorch_model.bin",
        "model.gguf",
        "run.sh",
        "model-1-of-2.safetensors",
        "model-00001-of-00002.safetensors.py",
        "config.json.py",
    ):
        assert not is_artifact_file(name), name

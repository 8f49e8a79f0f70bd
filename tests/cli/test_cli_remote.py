"""`mergepkg remote ...` and `mergepkg cache push|pull|sign` (issue 16), in-process.

The fast tests use artifacts made without torch and lock files written by hand; the
slow ones build a recipe in one home, push it to `file://` and to a real S3-compatible
server (moto's, on 127.0.0.1) and pull it into a fresh home that then builds it
`--locked` from what it pulled.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from helpers import THREE, build_recipe, cli
from registries import new_registry, skills
from remotes import S3_ENV, make_artifact, make_bucket, moto_server

from mergepkg.lockfile import Lock, LockedStep, read_lock, recipe_hash, write_lock
from mergepkg.recipe.flatten import flatten
from mergepkg.recipe.parse import load_recipe
from mergepkg.store.local import Store


def ok(capsys, *args) -> tuple[str, str]:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out, err


def refused(capsys, *args, fragment: str) -> str:
    """A command that fails with one located error line (and maybe a hint), exit 1."""
    code, _, err = cli(capsys, *args)
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip() and not line.lstrip().startswith("hint:")]
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err
    return lines[0]


def use_home(monkeypatch, home: Path) -> Store:
    monkeypatch.setenv("MERGEPKG_HOME", str(home))
    return Store(home)


def hand_lock(path: Path, arts) -> Path:
    write_lock(
        path,
        Lock(
            "sha256:" + "0" * 64,
            {},
            {f"s{i}": LockedStep(f"s{i}", "test", a.key, a.digest) for i, a in enumerate(arts)},
        ),
    )
    return path


@pytest.fixture
def shared(tmp_path, capsys) -> Path:
    """A `file://` remote named `team`, configured in the test's home."""
    folder = tmp_path / "shared"
    folder.mkdir()
    ok(capsys, "remote", "add", "team", folder)
    return folder


# -- configuration -------------------------------------------------------------------
def test_remote_add_list_remove_keys_and_trust(tmp_path, capsys, mergepkg_home):
    (tmp_path / "disk").mkdir()
    _, err = ok(capsys, "remote", "add", "team", tmp_path / "disk")
    assert f"added team: file://{tmp_path / 'disk'}" in err
    public, err = ok(capsys, "remote", "keygen", "alice")
    public = public.strip()
    assert public.startswith("alice:") and "alice.secret" in err
    assert (mergepkg_home / "keys" / "alice.secret").stat().st_mode & 0o777 == 0o600
    ok(capsys, "remote", "add", "--trusted-key", public.replace("alice:", "bob:"))
    out, _ = ok(capsys, "remote", "list")
    assert f"file://{tmp_path / 'disk'}" in out and "trusted bob:" in out and f"signing {public}" in out
    toml = (mergepkg_home / "remotes.toml").read_text()
    assert "secret" not in toml and public.split(":")[1] in toml  # the public key only
    refused(capsys, "remote", "add", "team", tmp_path / "disk", fragment="already configured")
    refused(capsys, "remote", "add", "x", "s4://bucket", fragment="unknown remote scheme 's4'")
    refused(capsys, "remote", "add", "--trusted-key", "bob:bm90IGEga2V5", fragment="not an ed25519 public key")
    refused(capsys, "remote", "keygen", "alice", fragment="a key named 'alice' exists")
    ok(capsys, "remote", "untrust", "bob")
    ok(capsys, "remote", "remove", "team")
    out, _ = ok(capsys, "remote", "list")
    assert "team" not in out and "trusted" not in out
    refused(capsys, "remote", "remove", "team", fragment="no remote named 'team'")


def test_push_needs_a_remote_and_asks_for_one_among_several(tmp_path, capsys):
    refused(capsys, "cache", "push", fragment="no remote is configured")
    for name in ("one", "two"):
        (tmp_path / name).mkdir()
        ok(capsys, "remote", "add", name, tmp_path / name)
    line = refused(capsys, "cache", "push", fragment="2 remotes are configured")
    assert "remotes.toml" in line


# -- push, pull, sign ------------------------------------------------------------------
def test_push_moves_only_what_is_missing_and_pull_checks_the_locks_digests(tmp_path, capsys, monkeypatch, shared):
    store = Store(Path(str(tmp_path / "mergepkg-home")))
    arts = [make_artifact(store, s) for s in (1, 2)]
    lock = hand_lock(tmp_path / "r.lock", arts)
    out, err = ok(capsys, "cache", "push", lock, "-q")
    assert out.splitlines()[0].startswith(f"pushed {arts[0].key[:16]} {lock}:s0")
    assert "2 pushed" in err
    out, err = ok(capsys, "cache", "push", lock, arts[0].key[:8], "-q")
    assert "2 already on file://" in err and "pushed" not in out
    home_b = tmp_path / "b"
    remotes_toml = (tmp_path / "mergepkg-home" / "remotes.toml").read_text()
    fresh = use_home(monkeypatch, home_b)
    home_b.mkdir()
    (home_b / "remotes.toml").write_text(remotes_toml)
    out, err = ok(capsys, "cache", "pull", lock, "-q")
    assert "2 pulled" in err and sorted(a.key for a in fresh.all()) == sorted(a.key for a in arts)
    _, err = ok(capsys, "cache", "pull", lock, "-q")
    assert "2 already stored here" in err


def test_a_tampered_file_and_an_unsigned_key_are_refused_and_nothing_is_stored(tmp_path, capsys, monkeypatch, shared):
    art = make_artifact(Store(tmp_path / "mergepkg-home"), 3)
    lock = hand_lock(tmp_path / "r.lock", [art])
    ok(capsys, "cache", "push", art.key[:12], "-q")
    remotes_toml = (tmp_path / "mergepkg-home" / "remotes.toml").read_text()
    fresh = use_home(monkeypatch, tmp_path / "b")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "remotes.toml").write_text(remotes_toml)
    refused(capsys, "cache", "pull", art.key[:12], "-q", fragment="no trusted key signed the record")
    shard = next((shared / "artifacts" / art.key).glob("*/model-00001-of-00002.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    code, _, err = cli(capsys, "cache", "pull", lock, "-q")
    assert (
        code == 1 and "hint: repair the remote from a home that holds this build: mergepkg cache push --rehash" in err
    )
    line = refused(capsys, "cache", "pull", lock, "-q", fragment="the file differs from its record")
    assert f"file://{shared}/artifacts/{art.key}/" in line
    assert fresh.all() == [] and not list((tmp_path / "b" / "tmp").iterdir())
    refused(capsys, "cache", "pull", "abcdef", "-q", fragment="no keys on the remote match 'abcdef'")


def test_cache_push_rehash_repairs_a_file_damaged_under_a_whole_record(tmp_path, capsys, monkeypatch, shared):
    """A plain push lists sizes only and says `present`; the pull's hint names `--rehash`,
    which reads the files back and puts the damaged one again (no command reached it)."""
    art = make_artifact(Store(tmp_path / "mergepkg-home"), 4)
    lock = hand_lock(tmp_path / "r.lock", [art])
    ok(capsys, "cache", "push", lock, "-q")
    shard = next((shared / "artifacts" / art.key).glob("*/model-00001-of-00002.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    _, err = ok(capsys, "cache", "push", lock, "-q")
    assert "1 already on" in err
    out, err = ok(capsys, "cache", "push", lock, "-q", "--rehash")
    assert out.startswith(f"repaired {art.key[:16]} {lock}:s0") and "1 repaired" in err
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "b"))
    ok(capsys, "remote", "add", "team", shared)
    _, err = ok(capsys, "cache", "pull", lock, "-q")
    assert "1 pulled" in err


def test_signed_pushes_and_cache_sign_admit_an_unpinned_key(tmp_path, capsys, monkeypatch, shared):
    home = tmp_path / "mergepkg-home"
    arts = [make_artifact(Store(home), s) for s in (4, 5)]
    ok(capsys, "cache", "push", arts[0].key, "-q")  # unsigned, then signed in place
    alice = ok(capsys, "remote", "keygen", "alice")[0].strip()
    out, err = ok(capsys, "cache", "sign")
    assert out.strip() == f"signed {arts[0].key[:16]} {arts[0].key[:16]}" and "1 signed" in err
    out, _ = ok(capsys, "cache", "push", arts[1].key[:10], "--sign", "-q")
    assert out.startswith("pushed")
    out, _ = ok(capsys, "cache", "sign", arts[0].key[:10], arts[1].key[:10])
    assert out.count("already signed") == 2
    remotes_toml = (home / "remotes.toml").read_text()
    fresh = use_home(monkeypatch, tmp_path / "b")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "remotes.toml").write_text(remotes_toml)
    ok(capsys, "remote", "add", "--trusted-key", alice)
    _, err = ok(capsys, "cache", "pull", arts[0].key[:10], arts[1].key, "-q")
    assert "2 pulled" in err and len(fresh.all()) == 2
    ok(capsys, "remote", "keygen", "carol")  # a pulled artifact holds the same files: carol may co-sign it
    out, _ = ok(capsys, "cache", "sign", arts[0].key)
    assert out.startswith(f"signed {arts[0].key[:16]}")
    ok(capsys, "remote", "keygen", "dave")
    refused(capsys, "cache", "sign", arts[0].key, fragment="2 signing keys")


def test_push_of_a_step_not_built_names_it(tmp_path, capsys, shared):
    art = make_artifact(Store(tmp_path / "elsewhere"), 6)
    lock = hand_lock(tmp_path / "r.lock", [art])
    code, _, err = cli(capsys, "cache", "push", lock)
    assert code == 1 and f"step 's0' ({art.key[:12]}) is not in the local store" in err
    assert f"hint: build it first: mergepkg build {lock}" in err
    assert not (shared / "records").exists()


def test_remote_gc_keeps_the_locks_steps(tmp_path, capsys, shared):
    arts = [make_artifact(Store(tmp_path / "mergepkg-home"), s) for s in (7, 8)]
    ok(capsys, "cache", "push", "-q")
    lock = hand_lock(tmp_path / "r.lock", arts[:1])
    refused(capsys, "remote", "gc", "team", fragment="no roots")
    out, err = ok(capsys, "remote", "gc", "team", "--keep-lock", lock, "--dry-run")
    assert out.strip() == f"would remove {arts[1].key[:16]}" and (shared / "records" / f"{arts[1].key}.json").exists()
    assert err.strip() == f"would remove 1 artifacts and 0 files from {shared.as_uri()}; kept what 1 locks pin (1 keys)"
    out, err = ok(capsys, "remote", "gc", "team", "--keep-lock", lock)
    assert "removed 1 artifacts" in err and sorted(p.stem for p in (shared / "records").iterdir()) == [arts[0].key]
    assert not (shared / "artifacts" / arts[1].key).exists()


# -- end to end, with a built recipe -----------------------------------------------------
@pytest.fixture(scope="module")
def s3_endpoint():
    with moto_server() as endpoint:
        yield endpoint


@pytest.mark.slow
def test_a_recipe_built_in_one_home_is_pulled_into_another_and_builds_locked_from_it(
    write_recipe, tmp_path, capsys, monkeypatch, s3_endpoint
):
    recipe = write_recipe(THREE)
    build_recipe(recipe, tmp_path / "out", home=tmp_path / "a")
    lock = read_lock(recipe.with_suffix(".lock"))
    bucket = f"b-{uuid.uuid4().hex[:12]}"
    make_bucket(s3_endpoint, bucket)
    for k, v in {**S3_ENV, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(k, v)
    (tmp_path / "disk").mkdir()
    for home in ("a", "b", "c"):
        use_home(monkeypatch, tmp_path / home)
        ok(capsys, "remote", "add", "disk", tmp_path / "disk")
        ok(capsys, "remote", "add", "s3", f"s3://{bucket}/cache")
    use_home(monkeypatch, tmp_path / "a")
    for name in ("disk", "s3"):
        out, err = ok(capsys, "cache", "push", recipe, "-r", name)
        assert "3 pushed" in err and len(out.splitlines()) == 3
    for home, name in (("b", "disk"), ("c", "s3")):
        store = use_home(monkeypatch, tmp_path / home)
        _, err = ok(capsys, "cache", "pull", recipe, "-r", name, "-q")
        assert "3 pulled" in err
        assert {a.key: a.digest for a in store.all()} == {s.key: s.digest for s in lock.steps.values()}
        _, err = ok(capsys, "build", recipe, "--locked", "-q", "--out", tmp_path / f"out-{home}")
        assert "0 built, 3 reused" in err


# -- publish --push ----------------------------------------------------------------------
@pytest.mark.parametrize("stale", ["lock", "version"])
def test_publish_push_refuses_before_anything_is_pushed(tmp_path, monkeypatch, capsys, stale):
    """Every check of `publish` runs before `--push` moves a file: a stale lock, or a
    version the registry holds with other bytes, left the steps pushed and then refused."""
    store = use_home(monkeypatch, tmp_path / "home")
    registry, remote = tmp_path / "registry", tmp_path / "remote"
    new_registry(registry)
    remote.mkdir()
    ok(capsys, "registry", "add", "team", registry)
    recipe = tmp_path / "pkg" / "skills.toml"
    recipe.parent.mkdir()
    if stale == "version":  # 0.1.0 is published; its recipe then edited, its version kept
        recipe.write_text(skills(weight=0.25))
        ok(capsys, "publish", recipe, "-r", "team")
    recipe.write_text(skills())
    held = "sha256:" + "0" * 64 if stale == "lock" else recipe_hash(flatten(load_recipe(recipe)))
    art = make_artifact(store)
    write_lock(
        recipe.with_suffix(".lock"), Lock(held, {}, {"skills": LockedStep("skills", "test", art.key, art.digest)})
    )
    fragment = "is out of date" if stale == "lock" else "already published with other content"
    refused(capsys, "publish", recipe, "-r", "team", "--push", remote.as_uri(), fragment=fragment)
    assert not [p for p in remote.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["cache", "pull"], "Missing argument 'RECIPE|KEY...'"),
        (["remote", "add"], "give NAME URL, or --trusted-key"),
        (["remote", "add", "team"], "no URL for remote 'team'"),
    ],
)
def test_what_is_missing_from_the_command_line_is_a_usage_error(tmp_path, monkeypatch, capsys, args, says):
    """Exit 2, as every page of docs/commands says of usage errors (these were exit 1)."""
    use_home(monkeypatch, tmp_path / "home")
    code, out, err = cli(capsys, *args)
    assert code == 2 and says in err and not out, err

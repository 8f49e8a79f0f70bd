"""Substitution from remotes (builder/substitute.py): the rule, and builds across two
homes over a file:// remote: outputs pulled with the lock's digests and no source read;
a tampered file or a forged signature refused, then built where it can be."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from registries import skills
from remotes import make_artifact

from mergepkg.builder.build import build
from mergepkg.builder.status import status
from mergepkg.builder.substitute import Offer, choose, push_locked
from mergepkg.errors import LockError, MergepkgError
from mergepkg.lockfile import Lock, LockedStep, lock_path, read_lock, write_lock
from mergepkg.recipe.parse import load_recipe
from mergepkg.remote.config import add_remote, trust_key
from mergepkg.remote.sign import generate_key, sign_record
from mergepkg.remote.sync import open_remote, push_artifact
from mergepkg.settings import Settings
from mergepkg.store.session import Session

# a -> b (b reads a); sources s1, s2, s3
INPUTS = {"a": ["s1", "s2"], "b": ["a", "s3"]}


class Warnings:
    """A reporter that keeps the warnings it is told in `warned` and ignores the rest."""

    def __init__(self, warned: list[str]):
        self.warned = warned

    def __getattr__(self, name):
        return self.warned.append if name == "warning" else lambda *a, **k: None


def offer(size: int) -> Offer:
    return Offer("team", "file:///r", size, "sha256:" + "0" * 64)


def test_auto_pulls_what_is_smaller_than_the_inputs_still_to_download():
    missing = {"s1": 100, "s2": 100, "s3": 0}
    c = choose(["a", "b"], INPUTS, ["b"], [], {"a": offer(90), "b": offer(90)}, missing, "auto")
    assert list(c.pull) == ["b"] and c.build == [] and c.sources == []  # a: upstream of a pulled step
    assert c.unneeded(["a", "b"], []) == ["a"]
    assert c.download == {"a": 200, "b": 90}  # b built: a pulled (90), s3 here (0)


def test_auto_builds_a_step_whose_inputs_are_all_here():
    missing = {"s1": 0, "s2": 0, "s3": 0}
    c = choose(["a", "b"], INPUTS, ["b"], [], {"a": offer(90), "b": offer(90)}, missing, "auto")
    assert c.pull == {} and c.build == ["a", "b"] and c.sources == ["s3", "s1", "s2"]


def test_prefer_pulls_and_never_builds_and_an_absent_input_is_infinite():
    missing = {"s1": 0, "s2": None, "s3": 0}
    prefer = choose(["a", "b"], INPUTS, ["b"], [], {"a": offer(90), "b": offer(90)}, missing, "prefer")
    assert list(prefer.pull) == ["b"]
    never = choose(["a", "b"], INPUTS, ["b"], [], {"a": offer(90), "b": offer(90)}, missing, "never")
    assert never.build == ["a", "b"] and math.isinf(never.download["a"])
    # b not offered: a pulled (its s2 is gone), then b built from it
    c = choose(["a", "b"], INPUTS, ["b"], [], {"a": offer(90)}, missing, "auto")
    assert list(c.pull) == ["a"] and c.build == ["b"] and c.sources == ["s3"]


def test_a_stored_step_is_kept_and_its_missing_inputs_obtained_as_without_remotes():
    c = choose(["a", "b"], INPUTS, ["b"], ["b"], {"a": offer(1), "b": offer(1)}, {}, "prefer")
    assert list(c.pull) == ["a"] and c.build == []
    c = choose(["a", "b"], INPUTS, ["b"], ["b"], {}, {}, "auto")
    assert c.pull == {} and c.build == ["a"]


# -- two homes over a file:// remote -------------------------------------------------------
RECIPE = """
[steps.a]
method = "linear"
inputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]

[steps.b]
method = "task_arithmetic"
base = "base"
inputs = [{ model = "a", weight = 1.0 }, { model = "ft3", weight = 0.5 }]
"""


@pytest.fixture
def shared(tmp_path, models, monkeypatch):
    """A recipe over copies of the tiny models, built and pushed (every step) from home A
    to a file:// remote; the current home is B, with that remote configured."""
    folders = {}
    for n in ("base", "ft1", "ft2", "ft3"):
        folders[n] = tmp_path / "models" / n
        shutil.copytree(models[n], folders[n])
    recipe = tmp_path / "r.toml"
    recipe.write_text(
        '[package]\nname = "shared"\nversion = "0.1.0"\n\n[sources]\n'
        + "".join(f'{n} = {{ path = "models/{n}" }}\n' for n in folders)
        + RECIPE
    )
    remote_dir = tmp_path / "remote"
    remote_dir.mkdir()
    home_a = Session(Settings(home=tmp_path / "home-a"))
    report = build(load_recipe(recipe), home_a)
    remote = open_remote(f"file://{remote_dir}")
    for art in report.artifacts.values():
        push_artifact(remote, art)
    home_b = tmp_path / "home-b"
    monkeypatch.setenv("MERGEPKG_HOME", str(home_b))
    add_remote(Settings(), "team", str(remote_dir))
    return recipe, folders, remote_dir, report


def digests(recipe: Path) -> dict[str, str | None]:
    lock = read_lock(lock_path(load_recipe(recipe)))
    assert lock is not None
    return {n: s.digest for n, s in lock.steps.items()}


def test_a_fresh_home_pulls_the_outputs_and_reads_no_source(shared):
    recipe, folders, _, first = shared
    locked = digests(recipe)
    for folder in folders.values():
        shutil.rmtree(folder)  # the source models are gone: only the lock says what they were
    st = status(load_recipe(recipe), Session())
    assert {n: s.state for n, s in st.steps.items()} == {"a": "unneeded", "b": "remote"}
    assert st.steps["b"].remote.size == first.artifacts["b"].size and math.isinf(st.steps["b"].download)
    report = build(load_recipe(recipe), Session(), mode="locked")
    assert report.pulled == {"b": "team"} and report.built == [] and set(report.artifacts) == {"b"}
    assert report.artifacts["b"].digest == locked["b"] and digests(recipe) == locked


def test_a_tampered_file_is_refused_then_built_or_the_build_fails_located(shared):
    recipe, folders, remote_dir, first = shared
    shard = next((remote_dir / "artifacts" / first.artifacts["b"].key).glob("*/*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1
    shard.write_bytes(bytes(data))
    warned: list[str] = []
    report = build(load_recipe(recipe), Session(), mode="locked", remote="prefer", reporter=Warnings(warned))
    assert report.built and any("differs from its record" in w for w in warned), warned
    assert digests(recipe)["b"] == report.artifacts["b"].digest
    # sources gone, a fresh home: nothing to build from, so the refusal is the error
    for folder in folders.values():
        shutil.rmtree(folder)
    shutil.rmtree(Settings().home / "store")
    with pytest.raises(MergepkgError) as info:
        build(load_recipe(recipe), Session(), mode="locked")
    assert "differs from its record" in info.value.message and str(remote_dir) in (info.value.where or "")
    assert "mergepkg cache push" in info.value.hint and "--rehash -r team" in info.value.hint  # what repairs it
    assert not any((Settings().home / "store").glob("[0-9a-f]*"))  # nothing of it entered the store


def test_no_remote_builds_and_prefer_remote_pulls_with_the_sources_here(shared):
    recipe, _, _, _ = shared
    auto = status(load_recipe(recipe), Session())
    assert {n: s.state for n, s in auto.steps.items()} == {"a": "build", "b": "build"}  # inputs here: 0 bytes
    assert build(load_recipe(recipe), Session(), remote="never").built == ["a", "b"]
    shutil.rmtree(Settings().home / "store")
    assert build(load_recipe(recipe), Session(), remote="prefer").pulled == {"b": "team"}


def test_an_unpinned_step_needs_a_trusted_signature_and_a_forged_one_is_refused(shared, tmp_path):
    recipe, _, remote_dir, first = shared
    lock_path(load_recipe(recipe)).unlink()  # no lock: no digest to check against
    home_a = Settings(home=tmp_path / "home-a")
    key = generate_key(home_a, "team")
    remote = open_remote(f"file://{remote_dir}")
    record = remote.record(first.artifacts["b"].key)
    remote.add_signatures(sign_record(record, key))
    trust_key(Settings(), key.public)
    assert build(load_recipe(recipe), Session(), remote="prefer").pulled == {"b": "team"}
    # another key under the trusted name: a forged signature, refused, and the step built
    shutil.rmtree(Settings().home / "store")
    lock_path(load_recipe(recipe)).unlink()
    forger = generate_key(Settings(home=tmp_path / "home-c"), "team")
    forged = sign_record(record, forger)
    remote._write_record(forged)
    report = build(load_recipe(recipe), Session(), remote="prefer")
    assert report.pulled == {} and report.built == ["a", "b"]
    assert any("signature" in w for w in report.warnings), report.warnings


def test_a_malformed_record_is_refused_alone_and_located(shared):
    """The other records of that remote are still offered; the refusal names the record and field."""
    recipe, _, remote_dir, first = shared
    record = remote_dir / "records" / f"{first.artifacts['a'].key}.json"
    doc = json.loads(record.read_text())
    doc["files"][0]["sha256"] = "zz"
    record.write_text(json.dumps(doc))
    warned: list[str] = []
    report = build(load_recipe(recipe), Session(), mode="locked", remote="prefer", reporter=Warnings(warned))
    assert report.pulled == {"b": "team"}  # b's record is good: pulled, though a's is not
    told = [w for w in warned if f"records/{first.artifacts['a'].key}.json: files[0].sha256" in w]
    assert len(told) == 1, warned  # once: it used to be told again as the step's refusal
    from mergepkg.builder import share
    from mergepkg.remote.errors import RemoteError

    with pytest.raises(RemoteError) as info:  # `cache pull`: the record's fault, not "not on the remote"
        share.pull(open_remote(f"file://{remote_dir}"), Session(), [first.artifacts["a"].key])
    assert "files[0].sha256" in (info.value.where or "") and "not on the remote" not in info.value.message


def test_push_locked_checks_every_step_before_pushing_any(tmp_path):
    """A lock whose later step's stored digest differs refuses with nothing on the remote:
    the earlier steps used to be pushed before the refusal."""
    session = Session(Settings(home=tmp_path / "home"))
    first, second = make_artifact(session.store, 1), make_artifact(session.store, 2)
    recipe = tmp_path / "r.toml"
    recipe.write_text(skills())
    steps = {"a": LockedStep("a", "test", first.key, first.digest)}
    steps["b"] = LockedStep("b", "test", second.key, "sha256:" + "1" * 64)
    write_lock(lock_path(load_recipe(recipe)), Lock("sha256:" + "0" * 64, {}, steps))
    remote = tmp_path / "remote"
    remote.mkdir()
    with pytest.raises(LockError, match="the stored 'b' has digest"):
        push_locked(session.settings, session.store, load_recipe(recipe), remote.as_uri())
    assert not [p for p in remote.rglob("*") if p.is_file()]
    steps["b"] = LockedStep("b", "test", second.key, second.digest)
    write_lock(lock_path(load_recipe(recipe)), Lock("sha256:" + "0" * 64, {}, steps))
    pushed = push_locked(session.settings, session.store, load_recipe(recipe), remote.as_uri())
    assert sorted(pushed) == ["a", "b"]


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def test_a_damaged_copy_on_the_first_remote_falls_back_to_the_next_one(shared, tmp_path):
    """Remote `bad` (added first) holds b with a flipped byte under a whole record, `team`
    a good copy: a build that cannot build b, and verify, take it from team. The first
    failed pull used to end both, the next remote never asked."""
    from mergepkg.builder.verify import verify
    from mergepkg.remote.config import remove_remote

    recipe, folders, remote_dir, first = shared
    bad = tmp_path / "bad"
    shutil.copytree(remote_dir, bad)
    flip_last_byte(next((bad / "artifacts" / first.artifacts["b"].key).glob("*/*.safetensors")))
    remove_remote(Settings(), "team")
    add_remote(Settings(), "bad", str(bad))
    add_remote(Settings(), "team", str(remote_dir))
    for folder in folders.values():
        shutil.rmtree(folder)  # b cannot be built here
    warned: list[str] = []
    report = build(load_recipe(recipe), Session(), mode="locked", reporter=Warnings(warned))
    assert report.pulled == {"b": "team"} and report.built == []
    assert any("differs from its record" in w and "trying remote team" in w for w in warned), warned
    shutil.rmtree(Settings().home / "store")
    checks = {c.step: c for c in verify(load_recipe(recipe), Session(), reporter=Warnings(warned))}
    assert (checks["b"].status, checks["b"].remote) == ("ok", "team")


def test_a_malformed_record_of_a_step_built_here_is_warned_about_once(shared):
    """The look-up warns about the record; the step's fallback to building used to say it again."""
    recipe, _, remote_dir, first = shared
    record = remote_dir / "records" / f"{first.artifacts['b'].key}.json"
    doc = json.loads(record.read_text())
    doc["files"][0]["size"] = -1
    record.write_text(json.dumps(doc))
    warned: list[str] = []
    report = build(load_recipe(recipe), Session(), mode="locked", remote="prefer", reporter=Warnings(warned))
    assert report.built == ["b"]
    assert len([w for w in warned if "files[0].size" in w]) == 1, warned


def test_when_every_remotes_copy_fails_build_and_verify_report_the_first_remote(shared, tmp_path):
    """Remotes `bad1` then `bad2` both hold b damaged: a build that cannot build b used to
    report the last remote's failure (with `-r bad2`), verify the first's; both now say the
    first, its remote named, after warning `trying remote bad2`."""
    from mergepkg.builder.verify import verify
    from mergepkg.remote.config import remove_remote

    recipe, folders, remote_dir, first = shared
    remove_remote(Settings(), "team")
    for name in ("bad1", "bad2"):
        shutil.copytree(remote_dir, tmp_path / name)
        flip_last_byte(next((tmp_path / name / "artifacts" / first.artifacts["b"].key).glob("*/*.safetensors")))
        add_remote(Settings(), name, str(tmp_path / name))
    for folder in folders.values():
        shutil.rmtree(folder)  # b cannot be built here
    warned: list[str] = []
    with pytest.raises(MergepkgError) as info:
        build(load_recipe(recipe), Session(), mode="locked", reporter=Warnings(warned))
    assert "differs from its record" in info.value.message and str(tmp_path / "bad1") in (info.value.where or "")
    assert "--rehash -r bad1" in (info.value.hint or "")
    assert any(str(tmp_path / "bad1") in w and "trying remote bad2" in w for w in warned), warned
    checks = {c.step: c for c in verify(load_recipe(recipe), Session(), reporter=Warnings(warned))}
    assert (checks["b"].status, checks["b"].remote) == ("refused", "bad1")
    assert str(tmp_path / "bad1") in (checks["b"].note or "")


def test_a_refusal_before_any_download_names_its_remote_in_the_hint(shared, tmp_path):
    """The lock pins another digest than the remotes' record: the look-up refuses it. With
    several remotes configured, the hint says which one to repair (it named none)."""
    from dataclasses import replace

    recipe, folders, _, _ = shared
    (tmp_path / "empty").mkdir()
    add_remote(Settings(), "empty", str(tmp_path / "empty"))
    lock = read_lock(lock_path(load_recipe(recipe)))
    assert lock is not None
    b = replace(lock.steps["b"], digest="sha256:" + "1" * 64)
    write_lock(lock_path(load_recipe(recipe)), replace(lock, steps={**lock.steps, "b": b}))
    for folder in folders.values():
        shutil.rmtree(folder)
    with pytest.raises(MergepkgError) as info:
        build(load_recipe(recipe), Session(), mode="locked")
    assert "the lock pins" in info.value.message and "--rehash -r team" in (info.value.hint or "")


def test_a_renamed_step_is_pulled_with_the_digest_its_key_is_locked_with(shared):
    """A step renamed keeps its key, and the lock's digest for it (found by key): a fresh
    home pulls it checked against that digest, with the sources gone (before, the digest
    was looked up by the new name: none, so an unsigned record was refused and the build
    failed, having nothing to build from)."""
    recipe, folders, _, first = shared
    recipe.write_text(recipe.read_text().replace("[steps.b]", "[steps.top]"))
    for folder in folders.values():
        shutil.rmtree(folder)
    report = build(load_recipe(recipe), Session())
    assert report.pulled == {"top": "team"} and report.built == []
    assert report.artifacts["top"].digest == first.artifacts["b"].digest
    assert digests(recipe) == {"a": first.artifacts["a"].digest, "top": first.artifacts["b"].digest}

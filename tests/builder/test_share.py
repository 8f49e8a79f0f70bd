"""builder/share.py (issue 16): the steps a lock pins pushed, signed and pulled through
a remote; what a remote gc keeps. Artifacts are made without torch (tests/remotes.py)
and remotes are in memory or on disk, so these are fast."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path

import pytest
from remotes import make_artifact

from mergepkg.builder import share
from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import LockError, StoreError
from mergepkg.lockfile import Lock, LockedStep, write_lock
from mergepkg.remote.errors import NotOnRemote, Refused, RemoteConfigError, RemoteError, reaching
from mergepkg.remote.sign import generate_key, trusted_signer
from mergepkg.remote.sync import open_remote, push_artifact
from mergepkg.settings import Settings
from mergepkg.store.gc import collect_garbage
from mergepkg.store.local import Artifact, Store
from mergepkg.store.session import Session


def session_at(home: Path) -> Session:
    return Session(Settings(home=home))


def lock_of(path: Path, arts, digests=None) -> Path:
    steps = {
        f"s{i}": LockedStep(f"s{i}", "test", a.key, (digests or {}).get(a.key, a.digest)) for i, a in enumerate(arts)
    }
    write_lock(path, Lock("sha256:" + "0" * 64, {}, steps))
    return path


class Recorder:
    """A ShareReporter that keeps what it was told."""

    def __init__(self):
        self.calls: list[tuple] = []

    def transfer_started(self, label, key):
        self.calls.append(("start", label, key))
        return lambda name, done, total: self.calls.append(("moved", name, done, total))

    def transfer_finished(self, label, key, what, nbytes):
        self.calls.append(("end", label, key, what, nbytes))


@pytest.fixture
def remote(tmp_path):
    return open_remote(f"memory://share-{uuid.uuid4().hex[:12]}")


def test_a_locks_steps_are_pushed_once_with_progress_then_pulled_with_its_digests(remote, tmp_path):
    a = session_at(tmp_path / "a")
    arts = [make_artifact(a.store, s) for s in (1, 2)]
    lock = lock_of(tmp_path / "r.lock", arts)
    seen = Recorder()
    moved = share.push(remote, a, [str(lock)], reporter=seen)
    assert [(m.label, m.what, m.nbytes) for m in moved] == [
        (f"{lock}:s0", "pushed", arts[0].size),
        (f"{lock}:s1", "pushed", arts[1].size),
    ]
    progress = [c for c in seen.calls if c[0] == "moved"]
    assert progress[-1][2:] == (arts[1].size, arts[1].size)
    again = share.push(remote, a, [str(lock)])
    assert [m.what for m in again] == ["present", "present"] and sum(m.nbytes for m in again) == 0
    b = session_at(tmp_path / "b")
    pulled = share.pull(remote, b, [str(lock)])
    assert [m.what for m in pulled] == ["pulled", "pulled"]
    assert all(b.store.get(x.key).digest == x.digest for x in arts)
    assert [m.what for m in share.pull(remote, b, [str(lock)])] == ["stored", "stored"]


def test_what_a_lock_pulled_survives_cache_gc_and_a_key_alone_does_not(remote, tmp_path):
    a = session_at(tmp_path / "a")
    arts = [make_artifact(a.store, s) for s in (1, 2)]
    lock = lock_of(tmp_path / "r.lock", arts[:1])
    key = generate_key(a.settings, "alice")
    share.push(remote, a, [str(lock), arts[1].key], signing_key=key)
    b = session_at(tmp_path / "b")
    share.pull(remote, b, [str(lock), arts[1].key], trusted=[key.public])
    assert b.store.roots() == [str(lock.resolve())]
    collect_garbage(b.store)
    assert [x.key for x in b.store.all()] == [arts[0].key]


def test_a_step_not_stored_is_an_error_naming_it_before_anything_moves(remote, tmp_path):
    a = session_at(tmp_path / "a")
    art = make_artifact(a.store, 1)
    other = make_artifact(Store(tmp_path / "elsewhere"), 2)
    lock = lock_of(tmp_path / "r.lock", [art, other])
    with pytest.raises(StoreError, match=r"step 's1'.*is not in the local store") as e:
        share.push(remote, a, [str(lock)])
    assert "build it first" in e.value.hint and remote.keys() == []
    no_lock = tmp_path / "new.toml"
    no_lock.write_text("")
    with pytest.raises(StoreError, match="has no lock"):
        share.push(remote, a, [str(no_lock)])


def test_a_key_prefix_is_pushed_and_pulled_only_with_a_trusted_signature(remote, tmp_path):
    a = session_at(tmp_path / "a")
    art = make_artifact(a.store, 3)
    share.push(remote, a, [art.key[:10]])
    b = session_at(tmp_path / "b")
    with pytest.raises(Refused, match="no trusted key signed"):
        share.pull(remote, b, [art.key[:10]])
    assert b.store.all() == []
    key = generate_key(a.settings, "alice")
    assert [m.what for m in share.push(remote, a, [art.key[:10]], signing_key=key)] == ["signed"]
    got = share.pull(remote, b, [art.key[:10]], trusted=[key.public])
    assert [m.what for m in got] == ["pulled"] and b.store.get(art.key).digest == art.digest
    with pytest.raises(StoreError, match="no keys on the remote match 'ffff'"):
        share.pull(remote, b, ["ffff"])


def test_sign_adds_a_signature_keeping_the_others_and_only_for_the_same_files(remote, tmp_path):
    a = session_at(tmp_path / "a")
    art = make_artifact(a.store, 4)
    alice, bob = generate_key(a.settings, "alice"), generate_key(a.settings, "bob")
    push_artifact(remote, art, signing_key=alice)
    assert [m.what for m in share.sign(remote, a, [], bob)] == ["signed"]
    record = remote.record(art.key)
    assert {s.key_id for s in record.signatures} == {"alice", "bob"}
    assert trusted_signer(record, [alice.public]) == "alice" and trusted_signer(record, [bob.public]) == "bob"
    assert [m.what for m in share.sign(remote, a, [art.key], bob)] == ["present"]  # signed already
    # another build of the key, with other files (here config.json): its signer vouches only for its own
    c = session_at(tmp_path / "c")
    folder = c.store.new_folder(art.key)
    for f in art.folder.glob("*.safetensors"):
        shutil.copy(f, folder / f.name)
    (folder / "config.json").write_text('{"model_type": "llama", "other": 1}')
    other = c.store.commit(art.key, folder, dict(art.manifest["entry"]), art.manifest["tensors"], seconds=0)
    carol = generate_key(c.settings, "carol")
    with pytest.raises(RemoteError, match="lists other files than the stored artifact"):
        share.sign(remote, c, [other.key], carol)
    assert {s.key_id for s in remote.record(art.key).signatures} == {"alice", "bob"}
    stray = make_artifact(c.store, 5)
    with pytest.raises(NotOnRemote, match="is not on the remote"):
        share.sign(remote, c, [stray.key], carol)


def test_the_remote_and_the_key_default_to_the_only_one(tmp_path):
    from mergepkg.remote.config import add_remote

    settings = Settings(home=tmp_path / "h")
    with pytest.raises(RemoteConfigError, match="no remote is configured"):
        share.choose_remote(settings, None)
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    add_remote(settings, "one", str(tmp_path / "one"))
    assert share.choose_remote(settings, None).url == f"file://{tmp_path / 'one'}"
    add_remote(settings, "two", str(tmp_path / "two"))
    with pytest.raises(RemoteConfigError, match="2 remotes") as e:
        share.choose_remote(settings, None)
    assert "one, two" in e.value.hint
    with pytest.raises(RemoteConfigError, match="no signing key"):
        share.choose_signing_key(settings, None)
    key = generate_key(settings, "me")
    assert share.choose_signing_key(settings, None) == key


def test_remote_gc_keeps_what_the_locks_pin_and_refuses_to_keep_nothing(remote, tmp_path):
    a = session_at(tmp_path / "a")
    arts = [make_artifact(a.store, s) for s in (6, 7)]
    share.push(remote, a, [])
    keep, roots = share.gc_roots([], [lock_of(tmp_path / "r.lock", arts[:1])])
    assert keep == {arts[0].key} and roots == [str(tmp_path / "r.lock")]
    assert share.remote_gc(remote, keep, dry_run=True).removed == (arts[1].key,)
    assert remote.keys() == sorted(x.key for x in arts)
    share.remote_gc(remote, keep)
    assert remote.keys() == [arts[0].key]
    with pytest.raises(RemoteError, match="no roots"):
        share.remote_gc(remote, set())
    with pytest.raises(StoreError, match="no such file"):
        share.gc_roots([tmp_path / "gone.toml"], [])


def test_signing_on_the_hub_is_one_commit_of_the_record_alone(tmp_path):
    from fsspec.implementations.memory import MemoryFileSystem
    from huggingface_hub import CommitOperationAdd

    from mergepkg.remote.hub import HubRemote

    fs, root = MemoryFileSystem(), f"datasets/team-{uuid.uuid4().hex[:8]}/builds"
    commits = []

    class FakeApi:  # create_commit applied to the memory filesystem (as tests/remote/test_remote_hub.py)
        def create_commit(self, repo_id, operations, *, commit_message, repo_type=None):
            commits.append(list(operations))
            for op in operations:
                data = op.path_or_fileobj
                fs.pipe_file(f"{root}/{op.path_in_repo}", data if isinstance(data, bytes) else Path(data).read_bytes())

    hub = HubRemote(FakeApi(), fs, f"{root}/cache")
    a = session_at(tmp_path / "a")
    art = make_artifact(a.store, 9)
    share.push(hub, a, [])
    assert [m.what for m in share.push(hub, a, [], signing_key=generate_key(a.settings, "team"))] == ["signed"]
    assert len(commits) == 2 and [op.path_in_repo for op in commits[1]] == [f"cache/records/{art.key}.json"]
    assert isinstance(commits[1][0], CommitOperationAdd) and [s.key_id for s in hub.record(art.key).signatures] == [
        "team"
    ]


def test_remote_gc_keeps_every_published_version_a_range_names(remote, tmp_path):
    from registries import new_registry, skills

    from mergepkg.registry.client import Registry, save
    from mergepkg.registry.folder import parse_published

    home = tmp_path / "home"
    a = session_at(home)
    arts = [make_artifact(a.store, s) for s in (8, 9, 10)]
    share.push(remote, a, [])
    folder = new_registry(tmp_path / "registry")
    for version, art in (("0.1.0", arts[0]), ("0.2.0", arts[1]), ("1.0.0", arts[2])):
        data = skills(version).encode()
        folder.publish(
            parse_published(data, "skills.toml"), data, lock_of(tmp_path / f"{version}.lock", [art]).read_text()
        )
    settings = Settings(home=home)
    save(settings, [Registry("team", str(tmp_path / "registry"))])
    keep, roots = share.gc_roots(["skills@<1"], [], settings)
    assert keep == {arts[0].key, arts[1].key} and roots == ["skills@0.1.0", "skills@0.2.0"]
    assert share.remote_gc(remote, keep).removed == (arts[2].key,)
    with pytest.raises(Exception, match="no version of skills"):
        share.gc_roots(["skills@^3"], [], settings)


def test_a_keep_lock_that_is_no_recipe_or_lock_is_said_so(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    for arg in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(StoreError, match="not a recipe or a lock file"):
            share.lock_for(arg)


def test_cache_gc_waits_while_a_pull_runs(remote, tmp_path, monkeypatch):
    """A pull (remote/sync.substitute) holds the store as a build does: gc would otherwise
    take its lock and temp folder."""
    from mergepkg.errors import BuildError

    a = session_at(tmp_path / "a")
    lock = lock_of(tmp_path / "r.lock", [make_artifact(a.store, 1)])
    share.push(remote, a, [str(lock)])
    b = session_at(tmp_path / "b")
    refused = []
    real = remote.pull

    def pulling(*args, **kwargs):  # files arriving in the store's temp folder
        with pytest.raises(BuildError, match="a build is running") as e:
            collect_garbage(b.store)
        refused.append(e.value)
        return real(*args, **kwargs)

    monkeypatch.setattr(remote, "pull", pulling)
    assert [m.what for m in share.pull(remote, b, [str(lock)])] == ["pulled"] and refused


def test_the_s3_client_s_own_errors_are_remote_errors_naming_the_remote(remote):
    """botocore's errors (no credentials, no endpoint) are not OSErrors."""
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    for error in (NoCredentialsError(), EndpointConnectionError(endpoint_url="http://127.0.0.1:1")):
        with pytest.raises(RemoteError, match="cannot reach the remote") as info, reaching(remote.url):
            raise error
        assert info.value.file == remote.url
    with pytest.raises(KeyError), reaching(remote.url):  # a bug of ours stays a bug
        raise KeyError("x")


def stored_export(store: Store, step_key: str):
    """An export artifact as builder/exports.py commits one: a GGUF file, its entry."""
    import hashlib

    from mergepkg.export.gguf import KEY_VERSION

    entry = {"export": "gguf", "version": KEY_VERSION, "type": "q8_0", "step": step_key, "converter": "sha256:0"}
    key = sha256_hex(canonical_json(entry))
    with store.lock(key):
        folder = store.new_folder(key)
        (folder / "model.gguf").write_bytes(b"GGUF" + bytes(60))
        sha = hashlib.sha256((folder / "model.gguf").read_bytes()).hexdigest()
        return store.commit(key, folder, entry, {}, seconds=0.0, sha256={"model.gguf": sha})


def test_exports_are_not_shared_every_step_is_pushed_past_them(remote, tmp_path):
    """`cache push` with no arguments pushes every stored step and no export (docs/export.md):
    an export stored before a step no longer stops the push; one named by key is refused."""
    a = session_at(tmp_path / "a")
    first = make_artifact(a.store, 1)
    exported = stored_export(a.store, first.key)
    last = make_artifact(a.store, 2)
    moved = share.push(remote, a, [])
    assert sorted(m.key for m in moved) == sorted([first.key, last.key]) and exported.key not in set(remote.keys())
    assert all(m.what == "pushed" for m in moved)
    with pytest.raises(StoreError, match=r"is an export .* exports are not shared") as e:
        share.push(remote, a, [exported.key[:12]])
    assert "mergepkg export" in (e.value.hint or "")
    key = generate_key(a.settings, "alice")
    assert sorted(m.key for m in share.sign(remote, a, [], key)) == sorted([first.key, last.key])


def test_a_file_damaged_on_the_remote_is_repaired_by_a_rehash_push(remote, tmp_path):
    """The record whole, a file flipped: a plain push says `present` and repairs nothing
    (sizes only), `rehash` reads the files back and puts the damaged one again."""
    a, b = session_at(tmp_path / "a"), session_at(tmp_path / "b")
    art = make_artifact(a.store, 1)
    lock = lock_of(tmp_path / "r.lock", [art])
    share.push(remote, a, [str(lock)])
    path = remote.path(remote.record(art.key).folder, "model-00001-of-00002.safetensors")
    data = bytearray(remote.fs.cat_file(path))
    data[-5] ^= 1
    remote.fs.pipe_file(path, bytes(data))
    with pytest.raises(Refused, match="differs from its record") as e:
        share.pull(remote, b, [str(lock)])
    assert "cache push --rehash" in e.value.hint
    assert [m.what for m in share.push(remote, a, [str(lock)])] == ["present"]
    repaired = share.push(remote, a, [str(lock)], rehash=True)
    assert [(m.what, m.nbytes) for m in repaired] == [("repaired", len(data))]
    assert [m.what for m in share.pull(remote, b, [str(lock)])] == ["pulled"]


def test_a_step_a_builds_lock_pins_without_a_digest_is_skipped_by_pull_and_push(remote, tmp_path):
    """`build --prefer-remote` pulls the output and writes its input's key without a digest
    (never needed): `cache pull RECIPE` used to refuse it (no trusted signature) and pull
    nothing, and `cache push RECIPE` from the pulling home to fail (not stored). A lock no
    build wrote (no digest at all) still needs a trusted signature."""
    a, b = session_at(tmp_path / "a"), session_at(tmp_path / "b")
    upstream, output = make_artifact(a.store, 1), make_artifact(a.store, 2)
    share.push(remote, a, [upstream.key, output.key])
    lock = lock_of(tmp_path / "r.lock", [upstream, output], {upstream.key: None})
    assert [m.what for m in share.pull(remote, b, [str(lock)])] == ["skipped", "pulled"]
    assert b.store.get(upstream.key) is None
    assert [m.what for m in share.push(remote, b, [str(lock)])] == ["skipped", "present"]
    assert [m.what for m in share.push(remote, a, [str(lock)])] == ["present", "present"]  # stored: pushed
    unbuilt = lock_of(tmp_path / "u.lock", [upstream], {upstream.key: None})
    with pytest.raises(Refused, match="no trusted key signed"):
        share.pull(remote, session_at(tmp_path / "c"), [str(unbuilt)])


TWO_STEPS = """
[steps.a]
method = "linear"
inputs = [{ model = "base", weight = 0.5 }, { model = "ft1", weight = 0.5 }]

[steps.b]
method = "linear"
inputs = [{ model = "a", weight = 0.5 }, { model = "ft1", weight = 0.5 }]
"""


def stored_as(store: Store, key: str, entry: dict, seed: int) -> Artifact:
    """An artifact of made-up tensors (as `make_artifact`'s) under a step's real key and
    lock entry, so a remote's record of it checks (the entry hashes to the key)."""
    import numpy as np
    from safetensors.numpy import save_file

    from mergepkg.io.digest import tensor_digests

    with store.lock(key):
        folder = store.new_folder(key)
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "seed": seed}))
        save_file(
            {"w": np.random.default_rng(seed).standard_normal((4, 8), dtype=np.float32)}, folder / "model.safetensors"
        )
        return store.commit(key, folder, entry, tensor_digests(folder), seconds=0.0)


def built(recipe: Path, session: Session) -> dict[str, Artifact]:
    """The recipe's steps stored in `session` under the keys it resolves to, and its lock
    written as a build writes it (keys and digests): a lock `build --locked` accepts."""
    from mergepkg.recipe.parse import load_recipe
    from mergepkg.resolve.lock import lock_recipe
    from mergepkg.resolve.resolution import resolve

    res = resolve(load_recipe(recipe), session)
    arts = {n: stored_as(session.store, res.keys[n], res.entries[n], i + 1) for i, n in enumerate(res.plan.order)}
    lock_recipe(load_recipe(recipe), session)
    return arts


def test_a_step_pulled_past_whose_digest_the_lock_keeps_is_skipped_by_push_sign_and_push_locked(
    remote, tmp_path, recipe_file
):
    """Home B builds by pulling the output `b` only; its lock keeps `a`'s digest from the
    lock before. `cache push RECIPE` from B used to fail "step 'a' is not in the local
    store", hinting to build it (which pulls past it again). An absent output still fails."""
    from mergepkg.builder.substitute import push_locked
    from mergepkg.recipe.parse import load_recipe

    a, b = session_at(tmp_path / "a"), session_at(tmp_path / "b")
    recipe = recipe_file(TWO_STEPS)
    arts = built(recipe, a)
    output = arts["b"]
    share.push(remote, a, [str(recipe)])
    stored_as(b.store, output.key, output.manifest["entry"], 2)  # only `b` here, as a build pulling it leaves B
    assert [m.what for m in share.push(remote, b, [str(recipe)])] == ["skipped", "present"]
    key = generate_key(b.settings, "bob")
    assert [(m.key, m.what) for m in share.sign(remote, b, [str(recipe)], key)] == [(output.key, "signed")]
    assert list(push_locked(b.settings, b.store, load_recipe(recipe), remote.url)) == ["b"]
    c = session_at(tmp_path / "c")
    stored_as(c.store, arts["a"].key, arts["a"].manifest["entry"], 1)  # `a` alone: the output is no step to skip
    with pytest.raises(StoreError, match=r"step 'b' .* is not in the local store"):
        share.push(remote, c, [str(recipe)])


def test_a_key_named_or_another_lock_needing_it_is_pulled_though_a_lock_marks_it_unneeded(remote, tmp_path):
    """A step a built lock pins without a digest is skipped by `cache pull`, but not when
    its key is given too (it used to say `skipped` and exit 0), nor when another lock
    given pins it as needed (the first lock's say used to win)."""
    a = session_at(tmp_path / "a")
    upstream, output = make_artifact(a.store, 1), make_artifact(a.store, 2)
    key = generate_key(a.settings, "alice")
    share.push(remote, a, [upstream.key, output.key], signing_key=key)
    built = lock_of(tmp_path / "built.lock", [upstream, output], {upstream.key: None})
    unbuilt = lock_of(tmp_path / "unbuilt.lock", [upstream], {upstream.key: None})  # no build wrote it
    b = session_at(tmp_path / "b")
    moved = share.pull(remote, b, [str(built), upstream.key[:12]], trusted=[key.public])
    assert [(m.key, m.what) for m in moved] == [(upstream.key, "pulled"), (output.key, "pulled")]
    c = session_at(tmp_path / "c")
    moved = share.pull(remote, c, [str(built), str(unbuilt)], trusted=[key.public])
    assert [(m.key, m.what) for m in moved] == [(upstream.key, "pulled"), (output.key, "pulled")]
    assert [m.what for m in share.pull(remote, session_at(tmp_path / "d"), [str(built)])] == ["skipped", "pulled"]


def test_a_pull_skips_a_step_the_outputs_do_not_need_where_the_remote_lacks_it(remote, tmp_path, recipe_file):
    """A push from a home that pulled the output skips the step upstream of it; a pull of
    the recipe from that remote then raised "is not on the remote" for that step, which
    no `build --locked` needs. It is pulled where the remote has it."""
    a = session_at(tmp_path / "a")
    recipe = recipe_file(TWO_STEPS)
    upstream, output = built(recipe, a).values()
    share.push(remote, a, [output.key])  # the output alone on the remote
    moved = share.pull(remote, session_at(tmp_path / "b"), [str(recipe)])
    assert [(m.key, m.what) for m in moved] == [(upstream.key, "skipped"), (output.key, "pulled")]
    share.push(remote, a, [str(recipe)])
    moved = share.pull(remote, session_at(tmp_path / "c"), [str(recipe)])
    assert [(m.key, m.what) for m in moved] == [(upstream.key, "pulled"), (output.key, "pulled")]
    lacking = open_remote(f"memory://share-{uuid.uuid4().hex[:12]}")
    share.push(lacking, a, [upstream.key])
    with pytest.raises(NotOnRemote, match=r"recipe\.toml:b"):  # the output is never skipped
        share.pull(lacking, session_at(tmp_path / "d"), [str(recipe)])


def test_a_lock_build_locked_would_refuse_is_neither_pulled_nor_pushed(remote, tmp_path, recipe_file):
    """After an upgrade of mergepkg that moved a step's key, `cache pull RECIPE` pulled what
    the old committed lock pinned ("done: 4 pulled"), and `build --locked` then refused the
    lock; `cache push RECIPE` pushed it. Both now refuse before anything moves, as they do
    a recipe edited since it was locked."""
    a = session_at(tmp_path / "a")
    recipe = recipe_file(TWO_STEPS)
    arts = built(recipe, a)
    lock_file = recipe.with_suffix(".lock")
    current = lock_file.read_text()
    old = make_artifact(a.store, 9)  # `b` as an older mergepkg keyed and built it
    share.push(remote, a, [arts["a"].key, old.key])
    lock_file.write_text(current.replace(arts["b"].key, old.key).replace(arts["b"].digest, old.digest))
    b = session_at(tmp_path / "b")
    with pytest.raises(LockError, match=r"is out of date: step 'b' changed \(key") as e:
        share.pull(remote, b, [str(recipe)])
    assert e.value.file == str(lock_file) and f"mergepkg lock {recipe}" in (e.value.hint or "")
    assert b.store.all() == [] and b.store.roots() == []  # nothing pulled, no root recorded
    with pytest.raises(LockError, match="out of date"):  # the lock given by its file, its recipe beside it
        share.pull(remote, b, [str(lock_file)])
    fresh = open_remote(f"memory://share-{uuid.uuid4().hex[:12]}")
    with pytest.raises(LockError, match="out of date") as e:
        share.push(fresh, a, [str(recipe)])
    assert "mergepkg build" in (e.value.hint or "") and fresh.keys() == []
    lock_file.write_text(current)
    recipe.write_text(
        recipe.read_text().replace('weight = 0.5 }, { model = "ft1"', 'weight = 0.25 }, { model = "ft1"', 1)
    )
    with pytest.raises(LockError, match="out of date: step 'a' changed"):  # what changed, named
        share.pull(remote, b, [str(recipe)])
    assert b.store.all() == []

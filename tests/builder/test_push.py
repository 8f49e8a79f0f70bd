"""builder/push.py (issue 19): a built output pushed through huggingface_hub's real client
to a fake Hub on 127.0.0.1 (tests/fakehub.py); the lock's record of it; `[publish]`."""

from __future__ import annotations

import pytest
from fakehub import FakeHub
from helpers import cli

from mergepkg.builder.build import build
from mergepkg.builder.outputs import MARKER
from mergepkg.builder.push import push
from mergepkg.errors import BuildError, RecipeError
from mergepkg.lockfile import Lock, LockedPush, LockedStep, parse_lock, read_lock, write_lock
from mergepkg.recipe.parse import load_recipe, parse_recipe
from mergepkg.settings import Settings
from mergepkg.store.session import Session

LINEAR = (
    '[steps.m]\nmethod = "linear"\ninputs = [{{ model = "ft1", weight = {w} }}, {{ model = "ft2", weight = 0.4 }}]\n'
)


def built(write_recipe, tmp_path, weight="0.6", name="recipe.toml"):
    path = write_recipe(LINEAR.format(w=weight), name=name)
    build(load_recipe(path), Session(Settings()), out=tmp_path / "out")
    return path


def on_hub(fake_hub: FakeHub, repo: str) -> dict[str, bytes]:
    r = fake_hub.repos[repo]
    return r.commits[r.head]


def test_a_push_sends_the_output_folder_once_then_only_what_changed(fake_hub, write_recipe, tmp_path):
    path = built(write_recipe, tmp_path)
    report = push(load_recipe(path), Session(Settings()), "org/merged")
    out = tmp_path / "out"
    folder = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    del folder[MARKER]
    assert {k: v for k, v in on_hub(fake_hub, "org/merged").items() if k != ".gitattributes"} == folder
    assert fake_hub.lfs  # model.safetensors went through the LFS batch and upload
    assert all(f.send for f in report.files) and report.commit == fake_hub.repos["org/merged"].head
    lock = read_lock(path.with_suffix(".lock"))
    assert lock is not None
    assert lock.pushes == (LockedPush("org/merged", report.commit, "m", report.key, lock.steps["m"].digest),)
    assert report.source == f'{{ hf = "org/merged", revision = "{report.commit}" }}'

    again = push(load_recipe(path), Session(Settings()), "org/merged")  # the lock now records a push
    assert not any(f.send for f in again.files) and again.commit == report.commit
    assert len(fake_hub.repos["org/merged"].commits) == 2  # the repo's first commit and ours: no empty one

    path = built(write_recipe, tmp_path, weight="0.5")
    third = push(load_recipe(path), Session(Settings()), "org/merged")
    sent = {f.path for f in third.files if f.send}
    assert "model.safetensors" in sent and "mergepkg.toml" in sent
    assert "config.json" not in sent and "tokenizer.json" not in sent
    assert third.commit != report.commit


def test_a_push_deletes_the_model_files_of_an_earlier_push_that_the_output_lacks(fake_hub, write_recipe, tmp_path):
    """One model.safetensors pushed, then the output in shards: the old file would be what
    transformers loads beside them. It is deleted; a file that is no model's is kept."""
    path = built(write_recipe, tmp_path)
    push(load_recipe(path), Session(Settings()), "org/merged")
    fake_hub.commit("org/merged", {"images/plot.png": b"png", "NOTES.md": b"mine"})
    path = write_recipe(LINEAR.format(w="0.5"))
    build(load_recipe(path), Session(Settings(max_shard_bytes=20_000)), out=tmp_path / "out")
    dry = push(load_recipe(path), Session(Settings()), "org/merged", dry_run=True)
    assert dry.deleted == ("model.safetensors",)
    assert "model.safetensors" in on_hub(fake_hub, "org/merged")  # a dry run changes nothing
    report = push(load_recipe(path), Session(Settings()), "org/merged")
    files = on_hub(fake_hub, "org/merged")
    assert report.deleted == ("model.safetensors",) and "model.safetensors" not in files
    assert "model.safetensors.index.json" in files and any(n.startswith("model-00001-of-") for n in files)
    assert files["images/plot.png"] == b"png" and files["NOTES.md"] == b"mine"


def test_a_gguf_uploaded_by_hand_is_kept_and_publish_private_creates_a_private_repo(fake_hub, write_recipe, tmp_path):
    """A push never sends an export, so a GGUF in the repo was put there by hand: a push
    with nothing new deleted it as "left from an earlier push". `[publish] private = true`
    was read by nothing: the repo was created public."""
    path = write_recipe(LINEAR.format(w="0.6") + '\n[publish]\nrepo = "org/merged"\nprivate = true\n')
    build(load_recipe(path), Session(Settings()), out=tmp_path / "out")
    push(load_recipe(path), Session(Settings()), None)
    assert fake_hub.repos["org/merged"].private
    fake_hub.commit("org/merged", {"merged-q8_0.gguf": b"GGUF"})
    report = push(load_recipe(path), Session(Settings()), None)
    assert report.deleted == () and on_hub(fake_hub, "org/merged")["merged-q8_0.gguf"] == b"GGUF"


def test_dry_run_private_repo_and_a_later_recipe_built_from_the_pushed_commit(
    fake_hub, write_recipe, models, tmp_path, capsys
):
    path = built(write_recipe, tmp_path)
    code, stdout, _ = cli(capsys, "push", f"{path}:m", "org/private", "--private", "--dry-run")
    assert code == 0 and not fake_hub.repos and not fake_hub.lfs
    lines = [line.split() for line in stdout.splitlines()]
    assert {(line[0], line[2]) for line in lines} >= {("send", "model.safetensors"), ("send", "mergepkg.lock")}

    code, stdout, stderr = cli(capsys, "push", str(path), "org/private", "--private")
    assert code == 0, stderr
    assert fake_hub.repos["org/private"].private
    commit = fake_hub.repos["org/private"].head
    assert f"{fake_hub.url}/org/private/commit/{commit}" in stdout
    assert f'{{ hf = "org/private", revision = "{commit}" }}' in stdout

    later = tmp_path / "later.toml"
    later.write_text(
        '[package]\nname = "later"\nversion = "0.1.0"\n\n[sources]\n'
        f'pushed = {{ hf = "org/private", revision = "{commit}" }}\nft3 = {{ path = "{models["ft3"]}" }}\n\n'
        '[steps.again]\nmethod = "linear"\ninputs = [{ model = "pushed", weight = 0.5 }, { model = "ft3", weight = 0.5 }]\n'
    )
    report = build(load_recipe(later), Session(Settings()), out=tmp_path / "later-out")
    lock = read_lock(later.with_suffix(".lock"))
    assert lock is not None and lock.sources["pushed"].pin.commit == commit
    assert (report.outputs["again"] / "model.safetensors").is_file()


def test_no_token_and_not_built_are_one_line_errors_with_hints(fake_hub, write_recipe, tmp_path, monkeypatch, capsys):
    path = write_recipe(LINEAR.format(w="0.6"))
    with pytest.raises(BuildError, match="not built") as e:
        push(load_recipe(path), Session(Settings()), "org/x")
    assert e.value.hint is not None and f"mergepkg build {path}" in e.value.hint  # as the recipe was named
    build(load_recipe(path), Session(Settings()), out=tmp_path / "out")
    monkeypatch.delenv("HF_TOKEN")
    code, _, stderr = cli(capsys, "push", str(path), "org/x")
    assert code == 1 and "401" in stderr and "HF_TOKEN" in stderr and "Traceback" not in stderr
    assert not fake_hub.repos


def test_publish_table_is_read_with_located_errors_and_changes_no_key(recipe_file):
    body = LINEAR.format(w="0.6")
    plain = load_recipe(recipe_file(body))
    text = plain.text + '\n[publish]\nrepo = "org/name"\nprivate = true\nstep = "m"\ncommit_message = "hi"\n'
    recipe = parse_recipe(text, plain.path)
    assert (recipe.publish.repo, recipe.publish.private, recipe.publish.step) == ("org/name", True, "m")
    from mergepkg.lockfile import recipe_hash

    assert recipe_hash(recipe) == recipe_hash(plain)
    for bad, key in (
        ('repo = "no-slash"', "publish.repo"),
        ('repo = "org/x.git"', "publish.repo"),
        ('private = "yes"', "publish.private"),
        ('step = "x"', "publish.step"),
        ("colour = 1", "publish.colour"),
    ):
        with pytest.raises(RecipeError) as e:
            parse_recipe(plain.text + f"\n[publish]\n{bad}\n", plain.path)
        assert e.value.key == key and e.value.line is not None


@pytest.mark.parametrize(
    "repo",
    ["org/x", "org/_a", "a_/b", "org/x.git", "org/x--y", "org/x..y", "org/-x", "org/x-", "org-/x", "o/" + "x" * 97],
)
def test_hub_repo_ids_are_what_huggingface_hub_takes(repo):
    """The parser's check, written without importing huggingface_hub, agrees with it
    (`org/x.git` passed here, then push died in a traceback; `org/_a` was refused)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from mergepkg.recipe.publish import hub_repo_problem

    try:
        validate_repo_id(repo)
        hub_ok = True
    except HFValidationError:
        hub_ok = False
    assert (hub_repo_problem(repo) is None) == hub_ok


def test_the_lock_keeps_pushes_and_reads_locks_without_them(tmp_path):
    step = LockedStep("m", "linear", "a" * 64, "sha256:" + "b" * 64)
    lock = Lock("sha256:" + "0" * 64, {}, {"m": step})
    write_lock(tmp_path / "x.lock", lock)
    plain = (tmp_path / "x.lock").read_text()
    assert "push" not in plain and parse_lock(plain, "x.lock") == lock
    pushed = Lock(lock.recipe_hash, {}, {"m": step}, pushes=(LockedPush("o/n", "c" * 40, "m", "a" * 64, step.digest),))
    write_lock(tmp_path / "y.lock", pushed)
    assert read_lock(tmp_path / "y.lock") == pushed


def test_a_hub_that_cannot_be_reached_is_one_line(write_recipe, tmp_path):
    """huggingface_hub's HTTP client raises its own connection errors, not OSErrors."""
    import socket

    from huggingface_hub import HfApi

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = built(write_recipe, tmp_path)
    api = HfApi(endpoint=f"http://127.0.0.1:{port}", token="hf_x")
    with pytest.raises(BuildError, match="cannot reach the Hub"):
        push(load_recipe(path), Session(Settings()), "org/merged", api=api)


def test_a_recipe_with_exports_pushes_without_the_converter_and_after_it_changed(
    fake_hub, write_recipe, tmp_path, monkeypatch
):
    """push sends the model folder, never an export: it needs no converter, and a changed
    converter tree (new export keys for a build) does not make the recipe "not built"."""
    from dataclasses import replace

    from llama_trees import llama_tree

    from mergepkg.resolve.lock import lock_recipe

    monkeypatch.delenv("MERGEPKG_LLAMA_CPP", raising=False)
    path = built(write_recipe, tmp_path)
    path.write_text(path.read_text() + '\n[exports.m-q8]\ntype = "q8_0"\n')
    tree = llama_tree(tmp_path / "llama.cpp")
    with_tree = Session(Settings(llama_cpp=tree))
    lock_recipe(load_recipe(path), with_tree)  # the export keyed; the step as built
    report = push(load_recipe(path), Session(replace(with_tree.settings, llama_cpp=None)), "org/merged")
    assert "model.safetensors" in {f.path for f in report.files}
    assert not any(f.path.endswith(".gguf") for f in report.files)
    (tree / "conversion" / "llama.py").write_text("# a new model class\n")
    again = push(load_recipe(path), with_tree, "org/merged")
    assert again.commit == report.commit


def test_a_push_with_no_repo_says_only_that(write_recipe, tmp_path, capsys):
    """It printed `pushing NAME to ?` before the error."""
    path = write_recipe(LINEAR.format(w="0.6"))
    code, _, stderr = cli(capsys, "push", str(path), "--dry-run")
    assert code == 1 and "pushing" not in stderr and "error: no repo to push to" in stderr


def test_a_head_that_moved_meanwhile_says_someone_pushed_and_to_push_again(fake_hub, write_recipe, tmp_path):
    """Another client's commit lands between the push reading the head and committing over
    it: the Hub answers 412 (Precondition Failed), which was reported as that with no hint."""
    path = built(write_recipe, tmp_path)
    push(load_recipe(path), Session(Settings()), "org/merged")
    path = built(write_recipe, tmp_path, weight="0.5")
    fake_hub.fault(
        r"^/api/models/org/merged/commit/",
        action=lambda: fake_hub.commit("org/merged", {"NOTES.md": b"theirs"}),
        times=1,
    )
    before = read_lock(path.with_suffix(".lock"))
    with pytest.raises(BuildError) as e:
        push(load_recipe(path), Session(Settings()), "org/merged")
    assert "someone pushed to org/merged meanwhile" in e.value.message and "412" in e.value.message
    assert e.value.hint is not None and "run push again" in e.value.hint
    assert read_lock(path.with_suffix(".lock")) == before  # no push recorded
    report = push(load_recipe(path), Session(Settings()), "org/merged")  # as the hint says
    assert report.commit == fake_hub.repos["org/merged"].head
    assert on_hub(fake_hub, "org/merged")["NOTES.md"] == b"theirs"

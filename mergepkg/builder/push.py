"""`mergepkg push`: a built output sent to a Hugging Face Hub model repo in one commit.

The files are those an output folder holds (`outputs.place_outputs` stages them in a
temporary folder beside the recipe, as `build --out NAME` would: the model as stored,
its card, the recipe and its lock, the mergekit config), compared with the repo's head:
a file the repo already has with the same content (git blob sha1, or sha256 for an
LFS file) is not sent. What differs goes in one `create_commit` on top of that head
(`parent_commit`: a head that moved meanwhile fails the push, never mixes two).
Nothing differing: no commit, the head is the pin.
The repo and commit are then recorded in the recipe's lock (`[[push]]`), so that
`{ hf = "ORG/NAME", revision = "COMMIT" }` in a later recipe takes exactly these bytes.

The token is huggingface_hub's (`--token`, else HF_TOKEN, else the cached login) and
is never written anywhere. The output must be built: push builds nothing.
"""

from __future__ import annotations

import fnmatch
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mergepkg.builder.outputs import MARKER, place_outputs
from mergepkg.errors import BuildError, LockError, MergepkgError
from mergepkg.lockfile import LockedPush, lock_path, read_lock, write_lock
from mergepkg.recipe.model import Recipe
from mergepkg.recipe.publish import hub_repo_problem
from mergepkg.resolve.resolution import resolve
from mergepkg.resolve.sources import first_line, is_network_error
from mergepkg.store.evals import EvalCache
from mergepkg.store.hashcache import sha256_and_git_blob
from mergepkg.store.session import Session

LOGIN_HINT = "log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass --token"


@dataclass(frozen=True)
class PushFile:
    path: str  # in the repo (posix)
    size: int
    send: bool  # False: the repo has it already


@dataclass(frozen=True)
class PushReport:
    repo: str
    step: str
    key: str
    files: list[PushFile]
    commit: str | None  # the commit holding the output; None for a dry run
    url: str | None  # the commit's page
    dry_run: bool = False
    deleted: tuple[str, ...] = ()  # model files of an earlier push the output no longer has (`stale`)

    @property
    def source(self) -> str:
        """The source line a later recipe takes the pushed model with."""
        return f'{{ hf = "{self.repo}", revision = "{self.commit}" }}'


def push(
    recipe: Recipe,
    session: Session,
    repo: str | None = None,
    *,
    step: str | None = None,
    private: bool | None = None,
    dry_run: bool = False,
    token: str | None = None,
    api: Any = None,
) -> PushReport:
    """Send output `step` (default: `[publish] step`, else the only output) of the built
    `recipe` to `repo` (default: `[publish] repo`) and record the commit in its lock."""
    from huggingface_hub import HfApi

    repo = repo or recipe.publish.repo
    if repo is None:
        raise BuildError("no repo to push to", hint="give ORG/NAME, or set `repo` in the recipe's [publish] table")
    if (problem := hub_repo_problem(repo)) is not None:
        raise BuildError(problem, hint="a model repo id like org/name")
    step = _output(recipe, step or recipe.publish.step)
    private = recipe.publish.private if private is None else private
    api = api or HfApi(token=token)
    # staged beside the recipe, as `build --out NAME` places it: local sources' paths in the
    # pushed lock and card are relative to a folder there
    staged = recipe.path.parent / f".mergepkg-push-{uuid.uuid4().hex[:12]}"
    with session.store.in_use(), _removed(staged):
        lock, res, art = _built(recipe, session, step)
        rows = EvalCache(session.settings.home).rows
        folder = place_outputs(res, {step: art}, staged, rows, lock=lock)[step]
        local = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
        local.pop(MARKER, None)
        head, remote = _remote_files(api, repo, must_exist=not dry_run, private=private)
        # a file the Hub lacks is sent unread; one it has, by either of its content ids
        send = [n for n, p in local.items() if (rid := remote.get(n)) is None or rid not in sha256_and_git_blob(p)]
        files = [PushFile(n, p.stat().st_size, n in send) for n, p in local.items()]
        deleted = stale(remote, local)
        if dry_run:
            return PushReport(repo, step, art.key, files, None, None, dry_run=True, deleted=deleted)
        commit = head
        if send or deleted:
            from huggingface_hub import CommitOperationAdd, CommitOperationDelete

            message = recipe.publish.commit_message or f"mergepkg push: {recipe.name} {recipe.version}, step {step}"
            ops: list[Any] = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(local[n])) for n in send]
            ops += [CommitOperationDelete(path_in_repo=n) for n in deleted]
            info = _hub(
                lambda: api.create_commit(
                    repo,
                    ops,
                    commit_message=message,
                    commit_description=f"key {art.key}\ndigest {art.digest}",
                    parent_commit=head,
                ),
                repo,
            )
            commit = info.oid
        assert commit is not None
    pushed = LockedPush(repo, commit, step, art.key, art.digest)
    kept = tuple(p for p in lock.pushes if (p.repo, p.step) != (repo, step))
    write_lock(lock_path(recipe), replace(lock, pushes=(*kept, pushed)))
    return PushReport(repo, step, art.key, files, commit, f"{api.endpoint}/{repo}/commit/{commit}", deleted=deleted)


# what transformers, tokenizers or a rebuild read from a model repo: a file of these that the
# output lacks would be read beside it (an earlier push's weights in one file, next to this
# push's shards), so the commit deletes it; any other file (images, notes, a GGUF: push never
# sends one, so one there was put there by hand) is kept
MODEL_FILES = (
    "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "pytorch_model*.bin.index.json",
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
    "mergekit_config.yml", "mergepkg.toml", "mergepkg.lock", "*.mergepkg.toml",
)  # fmt: skip


def stale(remote: dict[str, str], local: dict[str, Path]) -> tuple[str, ...]:
    """The repo's model files (MODEL_FILES, at its top level) that the output does not have."""
    return tuple(
        sorted(
            n
            for n in remote
            if n not in local and "/" not in n and any(fnmatch.fnmatchcase(n, pattern) for pattern in MODEL_FILES)
        )
    )


@contextmanager
def _removed(folder: Path) -> Iterator[None]:
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _output(recipe: Recipe, step: str | None) -> str:
    if step is None:
        if len(recipe.outputs) != 1:
            raise BuildError(
                f"the recipe has {len(recipe.outputs)} outputs: {', '.join(recipe.outputs)}",
                hint="name one: RECIPE:STEP, or `step` in [publish]",
            )
        return recipe.outputs[0]
    if step not in recipe.outputs:
        raise BuildError(f"{step!r} is not an output of the recipe", hint=f"outputs: {', '.join(recipe.outputs)}")
    return step


def _built(recipe: Recipe, session: Session, step: str):
    """The recipe's lock, resolution and the stored artifact of `step`, as the lock says."""
    hint = f"build it first: mergepkg build {recipe.display}"
    lock = read_lock(lock_path(recipe))
    if lock is None:
        raise BuildError("the recipe is not built: it has no lock", file=recipe.display, hint=hint)
    try:
        res = resolve(recipe, session, lock=lock, mode="locked", defer=True)
    except LockError as e:
        raise BuildError(f"the recipe is not built as it is: {e.message}", file=recipe.display, hint=hint) from None
    locked = lock.steps.get(step)
    art = session.store.get(res.keys[step])
    if art is None or locked is None or locked.digest != art.digest:
        raise BuildError(f"step {step!r} is not built (not in the store as locked)", file=recipe.display, hint=hint)
    return lock, res, art


def _remote_files(api: Any, repo: str, *, must_exist: bool, private: bool | None) -> tuple[str | None, dict]:
    """The repo's head commit and its files (path -> content id); a repo that is not
    there is created, unless `must_exist` is off (a dry run): then (None, {})."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        info = _hub(lambda: api.repo_info(repo), repo)
    except _NotFound:
        if not must_exist:
            return None, {}
        _hub(lambda: api.create_repo(repo, private=private, exist_ok=True), repo)
        info = _hub(lambda: api.repo_info(repo), repo)
    try:
        tree = _hub(lambda: list(api.list_repo_tree(repo, revision=info.sha, recursive=True)), repo)
    except RepositoryNotFoundError:  # an empty repo has no tree
        tree = []
    ids = {f.path: (f.lfs.sha256 if getattr(f, "lfs", None) else f.blob_id) for f in tree if hasattr(f, "blob_id")}
    return info.sha, ids


class _NotFound(MergepkgError):
    pass


def _hub(call, repo: str):
    """`call()` with the Hub's errors as one-line mergepkg errors."""
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        return call()
    except RepositoryNotFoundError as e:
        status = e.response.status_code if e.response is not None else None
        if status == 401:
            raise BuildError(f"the Hub refused access to {repo} (401: no valid token)", hint=LOGIN_HINT) from None
        raise _NotFound(f"no Hub repo {repo}") from None
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            raise BuildError(f"the Hub refused to let us write to {repo} ({status})", hint=LOGIN_HINT) from None
        if status == 412:  # the commit named the head it was made over as its parent, and the head moved
            raise BuildError(
                f"someone pushed to {repo} meanwhile: its head moved after this push read it (412)",
                hint="run push again: it compares with the new head and sends only what that lacks",
            ) from None
        raise BuildError(f"the Hub answered {status} for {repo}: {first_line(e)}") from None
    except Exception as e:
        if not (isinstance(e, OSError) or is_network_error(e)):  # the connection itself, else not ours
            raise
        raise BuildError(f"cannot reach the Hub: {e}", hint="check the network (and HF_ENDPOINT)") from None

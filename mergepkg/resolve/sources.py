"""Sources: turn `{ path = ... }` and `{ hf = ..., revision = ... }` into model folders.

Hugging Face sources go through huggingface_hub: online, the revision is resolved to a
commit and only the files a merge needs are downloaded (weights in one format,
configs, tokenizer); offline (`HF_HUB_OFFLINE=1`), the local Hugging Face cache serves
the revision or the error names the repo and revision. A source the lock pins is
fetched as the lock says: at its commit, exactly the lock's files (online, those
missing are downloaded and no others; offline, a missing one is an error naming it).

A cached snapshot is often a partial download (`hf download REPO FILE`, transformers
loading the model but not its tokenizer). Offline, with no lock to say which files the
merge reads, a snapshot is refused where an online build would read other files than
it holds and the cache cannot tell (huggingface_hub's `.no_exist/COMMIT/NAME` markers
record files a repo lacks): `pytorch_model.bin` where the repo may hold safetensors
weights, and no tokenizer at all. Online, mergepkg leaves those markers for the files
the repo was listed without, so its own downloads build offline afterwards.

A LoRA adapter (a source named after a `+`) is pinned by its adapter_config.json and
weights; an adapter where a model is expected is an error that says so.

Online, a failed fetch is reported as the failure it was (`hub_error`: unreachable, down,
gated, a token refused, rate limited, a file missing), never as a cache that is offline
(docs/commands/build.md, "When the Hub fails").
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from mergepkg.errors import MergepkgError, SourceError
from mergepkg.io.folder import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    BIN_INDEX,
    INDEX,
    SIDE_FILES,
    TOKENIZER_CONFIG,
    TOKENIZER_FILES,
    WEIGHTS,
    adapter_files,
    index_files,
    is_adapter_folder,
    used_files,
    weight_choice,
)
from mergepkg.lockfile import FileRecord, Pin
from mergepkg.recipe.model import Source
from mergepkg.settings import Settings
from mergepkg.store.hashcache import HashCache, Trust

# The files whose absence from a repo decides what an offline build of its snapshot reads:
# the safetensors weights (else .bin is read) and a tokenizer (TOKENIZER_CONFIG).
SAFETENSORS_WEIGHTS = (INDEX, WEIGHTS)
NO_EXIST = ".no_exist"  # huggingface_hub's: REPO_DIR/.no_exist/COMMIT/NAME, a file the repo lacks


class NotCached(SourceError):
    """A hub source, or some of the files a lock pins of it, not in the local Hugging
    Face cache, where the Hub may not be asked (offline, `--frozen`)."""


@dataclass(frozen=True)
class Fetched:
    """A source made local: its folder and, for the hub, the commit it resolved to."""

    folder: Path
    commit: str | None = None


def pin_folder(
    folder: Path,
    hashes: HashCache,
    commit: str | None = None,
    *,
    adapter: bool = False,
    trust: Mapping[str, Trust] | None = None,
    claims: bool = False,
) -> Pin:
    """The files a merge uses (`adapter`: a LoRA adapter's, `io/folder.adapter_files`), hashed.
    With `claims`, a sha256 known without reading the file (a hub blob's name, the lock's
    record in `trust`, by file name, or huggingface_hub's record of a `--local-dir`
    download) is taken and checked beside the build
    (`store/hashcache.check_files` before anything made from it is stored)."""
    records = []
    for name in folder_files(folder, adapter):
        size, digest = hashes.sha256(folder / name, (trust or {}).get(name), claims=claims, folder=folder)
        records.append(FileRecord(name, size, digest))
    return Pin(commit, tuple(records))


def folder_files(folder: Path, adapter: bool = False) -> list[str]:
    """The names of the files `pin_folder` pins; an error for a folder that is no model."""
    if adapter:
        return adapter_files(folder)
    if not (folder / "config.json").is_file():
        if is_adapter_folder(folder):
            raise adapter_not_model(folder)
        raise SourceError(
            f"model folder has no config.json: {folder}", hint="a source must be a Hugging Face model folder"
        )
    return used_files(folder)


def start_pin(
    folder: Path,
    hashes: HashCache,
    *,
    adapter: bool = False,
    trust: Mapping[str, Trust] | None = None,
    claims: bool = False,
) -> None:
    """Begin hashing, on background threads, the files `pin_folder` (with these `claims`) will
    read, so that several sources' files are hashed at once; what is wrong with the folder
    is left for `pin_folder` to say."""
    try:
        names = folder_files(folder, adapter)
    except (MergepkgError, OSError):
        return
    hashes.start([(folder / n, (trust or {}).get(n)) for n in names], claims=claims, folder=folder)


def adapter_not_model(where: Path | str) -> SourceError:
    """The error for a PEFT adapter (a folder or hub repo) where a model is expected."""
    return SourceError(
        f"{where} is a PEFT LoRA adapter ({ADAPTER_CONFIG}, no config.json), not a model",
        hint='apply it to its base model: write "BASE+ADAPTER" where the model is used (docs/recipes.md#lora-adapters)',
    )


def missing_bytes(source: Source, pin: Pin, settings: Settings) -> int | None:
    """Bytes of `pin`'s files that fetching `source` would still download: 0 for a local
    folder that is there, the files the local Hugging Face cache lacks for a hub source at
    the pinned commit; None when it cannot be had (a folder that is gone, or offline)."""
    if source.path is not None:
        return 0 if source.path.is_dir() else None
    from huggingface_hub import try_to_load_from_cache

    assert source.hf is not None  # flattened, a source that is not a folder is a hub repo
    missing = 0
    for f in pin.files:
        cached = try_to_load_from_cache(source.hf, f.name, cache_dir=settings.hf_cache, revision=pin.commit)
        if not isinstance(cached, str):
            missing += f.size
    return None if missing and settings.offline else missing


def hub_weight_files(names: list[str], shards: Callable[[str], list[str]]) -> list[str]:
    """The weight files to download from a repo of files `names`: those io/folder.py's
    `weight_choice` reads, and the index it reads them by with the shards it names
    (`shards(index)`: the index fetched first), not every file beside them (Mistral's
    repos hold a `consolidated.safetensors` of the whole model beside its shards)."""
    index, files = weight_choice(names)
    return files if index is None else [index, *shards(index)]


def fetch(
    source: Source,
    settings: Settings,
    commit: str | None = None,
    files: Collection[str] = (),
    *,
    adapter: bool = False,
) -> Fetched:
    """Make `source` local. `commit` (from a lock) replaces a hub source's revision, so a
    moved branch does not move the build; when the local Hugging Face cache holds that
    commit with every file in `files` (the lock's), the Hub is not asked at all. An
    `adapter` (a LoRA adapter, named after a `+`) downloads its config and weights only."""
    if source.path is not None:
        if not source.path.is_dir():  # gone since the lock pinned it (recipe/parse.py lets that through)
            raise SourceError(
                f"model folder not found: {source.path}",
                hint="the lock pins it, but a step to build reads it: put the folder back, or pull that step "
                "from a remote",
            )
        return Fetched(source.path)
    return _fetch_hf(source, settings, commit, files, adapter)


def _fetch_hf(
    source: Source, settings: Settings, commit: str | None, files: Collection[str], adapter: bool = False
) -> Fetched:
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    repo, rev = source.hf, commit or source.revision
    assert repo is not None  # fetch() sends the sources that are not folders; flattened, those are hub repos
    locked = bool(commit and files)  # the lock's files at its commit: those and no others
    try:
        if settings.offline or locked:
            cached = _cached(repo, rev, settings)
            if cached is not None:
                lacking = [f for f in files if not (cached / f).is_file()]
                if not lacking:
                    if settings.offline and not files and not adapter:
                        refuse_partial(repo, cached)
                    return Fetched(cached, cached.name)
                if settings.offline:
                    raise NotCached(
                        f"{repo}@{cached.name}: the local Hugging Face cache lacks {', '.join(lacking)}, "
                        "which the lock pins, and the hub is offline",
                        hint=f"download {'them' if len(lacking) > 1 else 'it'} once online: "
                        f"`hf download {repo} {' '.join(lacking)} --revision {cached.name}`",
                    )
        if locked:  # the lock's files, whatever the repo holds besides (a lock made from a partial cache)
            escaped = [glob.escape(f) for f in files]  # allow_patterns are fnmatch patterns
            folder = Path(snapshot_download(repo, revision=rev, allow_patterns=escaped, cache_dir=settings.hf_cache))
            return Fetched(folder, folder.name)
        info = HfApi().model_info(repo, revision=rev)
        names = [s.rfilename for s in info.siblings or []]

        def shards(index: str) -> list[str]:
            return index_files(Path(hf_hub_download(repo, index, revision=info.sha, cache_dir=settings.hf_cache)))

        if adapter:
            weights = next((w for w in ADAPTER_WEIGHTS if w in names), ADAPTER_WEIGHTS[0])
            allow = [ADAPTER_CONFIG, weights]
        elif "config.json" not in names and ADAPTER_CONFIG in names:
            raise adapter_not_model(f"{repo}@{rev}")
        else:
            allow = hub_weight_files(names, shards) + [f for f in names if f in SIDE_FILES]
        folder = Path(snapshot_download(repo, revision=info.sha, allow_patterns=allow, cache_dir=settings.hf_cache))
        if not adapter:
            mark_absent(folder, [f for f in (*SAFETENSORS_WEIGHTS, TOKENIZER_CONFIG) if f not in names])
        return Fetched(folder, info.sha)
    except SourceError:  # ours (a FileNotFoundError too): says what it means already
        raise
    except Exception as e:
        if not (isinstance(e, OSError) or is_network_error(e)):  # huggingface_hub's HTTP errors are OSErrors
            raise
        raise hub_error(repo, rev, e, offline=settings.offline) from e


# What to do about an answer that refuses the token, or no token where one is needed.
LOGIN_HINT = "log in with `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN to a token that can read it"


def hub_error(repo: str, rev: str | None, e: BaseException, *, offline: bool) -> SourceError:
    """The error for fetching `repo` at `rev` that failed with `e` (huggingface_hub's, an
    HTTP client's, an OSError), saying what the user can act on. Online, huggingface_hub
    turns a Hub it could not reach (no connection, a 5xx after its retries, a 429) into a
    `LocalEntryNotFoundError` (nothing in the cache to fall back on) caused by that
    failure: the failure is what is reported, not the cache, since nothing was offline."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo}@{rev}"
    if isinstance(e, FileNotFoundError) and offline:  # LocalEntryNotFoundError is one
        return NotCached(
            f"{where} is not in the local Hugging Face cache and the hub is offline",
            hint="run once online (unset HF_HUB_OFFLINE, drop --offline) to download it",
        )
    while isinstance(e, LocalEntryNotFoundError) and e.__cause__ is not None:
        e = e.__cause__  # the request that failed
    status = e.response.status_code if isinstance(e, HfHubHTTPError) and e.response is not None else None
    if isinstance(e, GatedRepoError):  # a RepositoryNotFoundError too: before it
        return SourceError(
            f"{repo} is gated: request access on its Hub page, then `hf auth login` or set HF_TOKEN",
            hint=f"its page: {hub_page(repo)}; the Hub answered {status}: {first_line(e)}",
        )
    if isinstance(e, RepositoryNotFoundError):
        return SourceError(
            f"no such model on the Hugging Face Hub: {repo}", hint="check the name; private repos need `hf auth login`"
        )
    if isinstance(e, RevisionNotFoundError):
        return SourceError(f"{repo} has no revision {rev!r}", hint="use a branch, tag or commit sha")
    if status in (401, 403):
        return SourceError(f"the Hub refused access to {where} ({status}): {first_line(e)}", hint=LOGIN_HINT)
    if status == 429:
        return SourceError(
            f"the Hub rate-limited the requests for {where} (429): {first_line(e)}",
            hint="wait a while and run it again; logged in (`hf auth login`, HF_TOKEN), the limits are higher",
        )
    if isinstance(e, RemoteEntryNotFoundError) or status == 404:
        name = requested_file(e)
        return SourceError(
            f"{where} has no file {name}" if name else f"the Hub found nothing for {where}: {first_line(e)}",
            hint="check the revision (the recipe's `revision`, the lock's commit): the file is not in the repo there",
        )
    if status is not None:
        return SourceError(
            f"the Hub answered {status} for {where}: {first_line(e)}",
            hint=f"the Hub ({hub_page('')}) may be down: run it again later, or set HF_HUB_OFFLINE=1 to build from "
            "the local cache",
        )
    if isinstance(e, LocalEntryNotFoundError):  # no request failed (a partial snapshot, say): as huggingface_hub says
        return NotCached(f"{where}: {first_line(e)}", hint="run it again once the Hub can be reached")
    if isinstance(e, OSError) and not isinstance(e, (ConnectionError, TimeoutError)):  # here: the cache, the disk
        return SourceError(
            f"cannot fetch {where}: {first_line(e)}",
            hint="check that the Hugging Face cache (HF_HUB_CACHE, HF_HOME) can be written and has room",
        )
    return SourceError(
        f"cannot reach the Hugging Face Hub for {where}: {first_line(e)}",
        hint=f"check the network and HF_ENDPOINT (now {hub_page('')}), or set HF_HUB_OFFLINE=1 to build from the "
        "local cache",
    )


def hub_page(repo: str) -> str:
    """`repo`'s page on the Hub huggingface_hub talks to (HF_ENDPOINT); the Hub itself for ''."""
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo}" if repo else constants.ENDPOINT


def first_line(e: BaseException) -> str:
    """What `e` says, on one line: the Hub's own message where it sent one (huggingface_hub
    puts the status line, a link and that message on several lines)."""
    text = getattr(e, "server_message", None) or str(e) or type(e).__name__
    return next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)


def requested_file(e: BaseException) -> str | None:
    """The file a failed download asked for: the path after `/resolve/REVISION/` in its URL."""
    try:
        url = str(e.response.request.url)  # type: ignore[attr-defined]  # an HfHubHTTPError's
    except (AttributeError, RuntimeError):  # no response, or httpx's "request not set"
        return None
    path = unquote(url).split("?")[0]
    _, found, rest = path.partition("/resolve/")
    return rest.split("/", 1)[1] if found and "/" in rest else None


def _cached(repo: str, rev: str | None, settings: Settings) -> Path | None:
    """The snapshot folder of `repo` at `rev` in the local Hugging Face cache; None where
    there is none and the Hub may be asked (offline, huggingface_hub's error is raised)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, revision=rev, local_files_only=True, cache_dir=settings.hf_cache))
    except (LocalEntryNotFoundError, FileNotFoundError):
        if settings.offline:
            raise
        return None


def absent_files(snapshot: Path) -> set[str]:
    """The files huggingface_hub (or `mark_absent`) recorded the repo as lacking at the
    commit of `snapshot` (a `snapshots/COMMIT` folder): `.no_exist/COMMIT/NAME`."""
    try:
        return {p.name for p in (snapshot.parent.parent / NO_EXIST / snapshot.name).iterdir() if p.is_file()}
    except OSError:
        return set()


def mark_absent(snapshot: Path, names: Collection[str]) -> None:
    """Record, as huggingface_hub does for a file the Hub answered 404 for, that the repo
    lacks `names` at the commit of `snapshot`: the listing of that commit said so, and an
    offline build reads the record (`refuse_partial`). A cache that cannot be written keeps
    none: offline, the snapshot is then refused as one that may be partial."""
    folder = snapshot.parent.parent / NO_EXIST / snapshot.name
    try:
        if names:
            folder.mkdir(parents=True, exist_ok=True)
        for name in names:
            (folder / name).touch()
    except OSError:
        return


def refuse_partial(repo: str, snapshot: Path) -> None:
    """Raise a SourceError where `repo`'s cached `snapshot` (no lock naming its files) may be a
    partial download whose merge would differ from an online build's: it holds .bin
    weights and the cache cannot say the repo lacks safetensors ones (online, those are
    read: other tensors, another key), or no tokenizer file and the cache cannot say the
    repo has none (the output would silently have no tokenizer)."""
    where = f"{repo}@{snapshot.name}"
    present = [p.name for p in snapshot.iterdir()]
    if "config.json" not in present:
        return  # no model (an adapter?): `pin_folder` says what it is
    absent = absent_files(snapshot)
    index, weights = weight_choice(present)
    if (index == BIN_INDEX or any(w.endswith(".bin") for w in weights)) and not set(SAFETENSORS_WEIGHTS) <= absent:
        raise NotCached(
            f"{where}: the local Hugging Face cache holds its {index or weights[0]} but no safetensors weights, "
            "and cannot say whether the repo has them (online, those are what a merge reads)",
            hint=f"build once online (unset HF_HUB_OFFLINE), or `hf download {repo} "
            f"--include 'model*.safetensors*' --revision {snapshot.name}`",
        )
    if not any(n in present for n in TOKENIZER_FILES) and TOKENIZER_CONFIG not in absent:
        raise NotCached(
            f"{where}: the local Hugging Face cache holds no tokenizer files of it, and cannot say whether the "
            "repo has none (a partial download?); a merge copies its tokenizer into the output",
            hint=f"build once online (unset HF_HUB_OFFLINE), or `hf download {repo} "
            f"--include 'tokenizer*' --revision {snapshot.name}`",
        )


# The HTTP clients huggingface_hub has used (requests, httpx, httpx2 by version): their
# connection errors are not huggingface_hub's own, nor always OSErrors.
HTTP_CLIENTS = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2")


def is_network_error(e: BaseException) -> bool:
    """Whether `e` is an HTTP client's own (a connection that failed, not an answer)."""
    return any(c.__module__.split(".")[0] in HTTP_CLIENTS for c in type(e).__mro__)

"""Sources: turn `{ path = ... }` and `{ hf = ..., revision = ... }` into model folders.

Hugging Face sources go through huggingface_hub: online, the revision is resolved to a
commit and only the files a merge needs are downloaded (weights in one format,
configs, tokenizer); offline (`HF_HUB_OFFLINE=1`), the local Hugging Face cache serves
the revision or the error names the repo and revision. A LoRA adapter (a source named
after a `+`) is pinned by its adapter_config.json and weights; an adapter where a model
is expected is an error that says so.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from mergepkg.errors import MergepkgError, SourceError
from mergepkg.io.folder import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    SIDE_FILES,
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
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, rev = source.hf, commit or source.revision
    assert repo is not None  # fetch() sends the sources that are not folders; flattened, those are hub repos
    try:
        if settings.offline or (commit and files):
            try:
                folder = Path(snapshot_download(repo, revision=rev, local_files_only=True, cache_dir=settings.hf_cache))
                if settings.offline or all((folder / f).is_file() for f in files):
                    return Fetched(folder, folder.name)
            except (LocalEntryNotFoundError, FileNotFoundError):
                if settings.offline:
                    raise
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
        return Fetched(folder, info.sha)
    except SourceError:  # ours (a FileNotFoundError too): says what it means already
        raise
    except (LocalEntryNotFoundError, FileNotFoundError) as e:
        raise SourceError(
            f"{repo}@{rev} is not in the local Hugging Face cache and the hub is offline",
            hint="run once online (unset HF_HUB_OFFLINE, drop --offline) to download it",
        ) from e
    except RepositoryNotFoundError as e:
        raise SourceError(
            f"no such model on the Hugging Face Hub: {repo}", hint="check the name; private repos need `hf auth login`"
        ) from e
    except RevisionNotFoundError as e:
        raise SourceError(f"{repo} has no revision {rev!r}", hint="use a branch, tag or commit sha") from e
    except (HfHubHTTPError, OSError) as e:
        raise SourceError(
            f"cannot fetch {repo}@{rev}: {e}", hint="check the network, or set HF_HUB_OFFLINE=1 to use the cache"
        ) from e
    except Exception as e:
        if not is_network_error(e):
            raise
        raise SourceError(
            f"cannot reach the Hugging Face Hub for {repo}@{rev}: {e}",
            hint="check the network, or set HF_HUB_OFFLINE=1 to build from the local cache",
        ) from e


# The HTTP clients huggingface_hub has used (requests, httpx, httpx2 by version): their
# connection errors are not huggingface_hub's own, nor always OSErrors.
HTTP_CLIENTS = ("requests", "urllib3", "httpx", "httpx2", "httpcore", "httpcore2")


def is_network_error(e: BaseException) -> bool:
    """Whether `e` is an HTTP client's own (a connection that failed, not an answer)."""
    return any(c.__module__.split(".")[0] in HTTP_CLIENTS for c in type(e).__mro__)

"""The store: built steps (artifacts) addressed by key under `$MERGEPKG_HOME/store`.

An artifact is a Hugging Face model folder plus `mergepkg-manifest.json` (or, for an
export, its file: then the manifest holds the file's sha256 instead of tensor digests). It is built
in `tmp/` (or, where `store/` is on another file system, `store/.tmp`: the same one), the
manifest is written last, and the folder is renamed to `store/<key>`: a folder there
always has a complete manifest, whatever was killed when. Builders of one key serialise
on `locks/<key>.lock`; the second finds the artifact and reuses it.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeGuard

from mergepkg._lazy import lazy_import
from mergepkg._version import __version__
from mergepkg.errors import BuildError, MergepkgError, StoreError, disk_error
from mergepkg.files import write_atomic
from mergepkg.io.digest import combine_digests, model_digest, tensor_digests
from mergepkg.io.tensors import scan_tensors
from mergepkg.store.hashcache import sha256_file

if TYPE_CHECKING:
    import filelock
    from filelock import FileLock
else:
    filelock = lazy_import("filelock")  # by the first lock taken: not by validate or plan

MANIFEST = "mergepkg-manifest.json"


def is_key(name: str) -> bool:
    """Whether `name` is a step key (lowercase hex), as the store's folders are named."""
    return bool(name) and all(c in "0123456789abcdef" for c in name)


def _complete(manifest: object, key: str) -> TypeGuard[dict]:
    """Whether a manifest is one `commit` wrote for `key`: anything else is no artifact."""
    if not isinstance(manifest, dict) or manifest.get("key") != key or not isinstance(manifest.get("digest"), str):
        return False
    files = manifest.get("files")
    return isinstance(files, dict) and all(
        isinstance(r, dict) and type(r.get("size")) is int and type(r.get("mtime_ns")) is int for r in files.values()
    )


@dataclass(frozen=True)
class Artifact:
    key: str
    folder: Path
    manifest: dict

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.manifest["files"].values())

    def holds(self, sample_bytes: int | None = None) -> bool:
        """Whether the tensors still give the digests recorded at build time: every tensor
        (`sample_bytes` None), or tensors chosen at random up to about `sample_bytes`. An
        artifact from before per-tensor digests were recorded is read whole."""
        if isinstance(hashes := self.manifest.get("sha256"), dict):
            return self._files_hold(hashes, sample_bytes)
        recorded = self.manifest.get("tensors")
        try:
            if not isinstance(recorded, dict):
                return model_digest(self.folder) == self.digest
            names = list(recorded)
            if sample_bytes is not None:
                sizes = {n: t.nbytes for n, t in scan_tensors(self.folder).items()}
                random.shuffle(names)
                chosen: list[str] = []
                total = 0
                for n in names:
                    if chosen and total + sizes.get(n, 0) > sample_bytes:
                        break
                    chosen.append(n)
                    total += sizes.get(n, 0)
                names = chosen
            found = tensor_digests(self.folder, set(names))
        except (MergepkgError, OSError):
            return False
        return all(found.get(n) == recorded[n] for n in names)

    def _files_hold(self, hashes: dict[str, str], sample_bytes: int | None) -> bool:
        """Whether whole files still have their sha256: all, or some at random up to about `sample_bytes`."""
        names = list(hashes)
        random.shuffle(names)
        total = 0
        for name in names:
            if sample_bytes is not None and total and total + self.manifest["files"][name]["size"] > sample_bytes:
                break
            total += self.manifest["files"][name]["size"]
            try:
                if sha256_file(self.folder / name) != hashes[name]:
                    return False
            except OSError:
                return False
        return True

    def intact(self) -> bool:
        """Cheap check that no file was changed since the build: sizes and mtimes.
        A shard edited by hand fails it; `verify` re-reads every tensor."""
        for name, rec in self.manifest["files"].items():
            try:
                st = os.stat(self.folder / name)
            except FileNotFoundError:
                return False
            if st.st_size != rec["size"] or st.st_mtime_ns != rec["mtime_ns"]:
                return False
        return True


STAGING = ".tmp"  # in `store/`, where it is on another file system than `tmp/` (no key: listed by nothing)


def _apart(a: Path, b: Path) -> bool:
    """Whether `b` (an existing folder) is on another file system than `a`, or than the
    nearest folder above `a` that exists. Unknown (nothing can be looked at): False."""
    try:
        dev = os.stat(b).st_dev
        above = next(p for p in (a, *a.parents) if p.exists())
        return os.stat(above).st_dev != dev
    except (OSError, StopIteration):
        return False


class Store:
    def __init__(self, home: Path):
        self.home = home
        self.root = home / "store"
        self.locks = home / "locks"

    @property
    def tmp(self) -> Path:
        """Where artifacts are made, and discarded: `tmp/`, or `store/.tmp` when `store/` is
        on another file system than `tmp/` (a link to another disk, a mount), since a commit
        (and a discard) is a rename, which never crosses file systems. Decided at each use:
        a store moved between builds stages beside itself from then on."""
        tmp, beside = self.staging
        return beside if _apart(tmp, self.root) else tmp

    @property
    def staging(self) -> tuple[Path, Path]:
        """The two places a build may stage in (`tmp`): `tmp/` and `store/.tmp`."""
        return self.home / "tmp", self.root / STAGING

    def temp_folder(self, prefix: str) -> Path:
        """A new folder in `tmp`, named `prefix` and a random part: renamed into `store/`,
        or removed, by whoever made it; or by `clean_tmp` once no one holds the lock of
        the name's start (up to its first dot)."""
        tmp = self.tmp
        tmp.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=prefix, dir=tmp))

    def cleaned(self) -> tuple[Path, ...]:
        """The folders whose content builds and `cache gc` remove: `store/` (artifacts and
        broken key folders, `store/.tmp` among them), `locks/`, and `tmp/`."""
        return (self.root, self.locks, self.staging[0])

    @contextmanager
    def in_use(self) -> Iterator[None]:
        """Held (shared) by every build for its whole run; `gc` needs it exclusively, so it
        never removes an artifact a running build is about to read."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "store.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def add_root(self, lock_file: Path) -> None:
        """Remember a lock file whose steps `gc` must keep (`roots.json`). A build records
        it before it writes the lock, so a lock on disk is never one gc does not keep."""
        path = self.home / "roots.json"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with filelock.FileLock(path.with_suffix(".lock")):  # read-modify-write, one process at a time
                roots = self.roots()
                if str(lock_file) not in roots:  # durable: a torn list would make gc keep nothing
                    write_atomic(path, json.dumps(sorted([*roots, str(lock_file)]), indent=1), durable=True)
        except OSError as e:
            raise disk_error(e, f"recording {lock_file.name} in {path}") or e from None

    def roots(self) -> list[str]:
        """The lock files of the recipes built with this store. A damaged list is an error:
        read as no roots, gc would remove every artifact."""
        path = self.home / "roots.json"
        try:
            roots = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (ValueError, RecursionError):
            roots = None
        if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
            raise StoreError(
                "the list of locks whose steps gc keeps is damaged",
                file=str(path),
                hint="fix it (a JSON list of lock file paths) or delete it: gc then keeps what later builds record",
            )
        return roots

    def path(self, key: str) -> Path:
        if not is_key(key):
            raise ValueError(f"not a key: {key!r}")
        return self.root / key

    def get(self, key: str) -> Artifact | None:
        """The artifact for `key`, or None; a folder without a complete manifest is none,
        and so is one whose manifest cannot be read here (a build rebuilds it)."""
        try:
            manifest = self._manifest(key)
        except OSError:
            return None
        if not _complete(manifest, key):
            return None
        return Artifact(key, self.path(key), manifest)

    def _manifest(self, key: str) -> object:
        """The parsed manifest of `store/<key>`: None where it is missing or not JSON (no
        artifact for certain); any other OSError (a permission error) is raised, as it
        says nothing about the artifact."""
        try:
            return json.loads((self.path(key) / MANIFEST).read_text())
        except (FileNotFoundError, NotADirectoryError, ValueError, RecursionError):
            return None

    def find(self, prefix: str) -> list[Artifact]:
        """Artifacts whose key starts with `prefix` (as `cache info abc123`)."""
        if not self.root.is_dir():
            return []
        names = sorted(n for n in os.listdir(self.root) if is_key(n) and n.startswith(prefix))  # not .DS_Store
        return [a for n in names if (a := self.get(n))]

    def all(self) -> list[Artifact]:
        return self.find("")

    def find_one(self, prefix: str) -> Artifact:
        """The one artifact whose key starts with `prefix`; an error for none or several."""
        found = self.find(prefix) if prefix else []
        if len(found) != 1:
            raise StoreError(
                f"{'no' if not found else len(found)} artifacts match key {prefix!r}",
                hint="see `mergepkg cache list`" if not found else "give more of the key",
            )
        return found[0]

    def lock(self, key: str) -> FileLock:
        self.locks.mkdir(parents=True, exist_ok=True)
        return filelock.FileLock(self.locks / f"{key}.lock")

    def new_folder(self, key: str) -> Path:
        folder = self.temp_folder(f"{key}.")
        folder.chmod(0o755)  # mkdtemp's 0700 would hide the 0644 files from the store's other readers
        return folder

    def commit(
        self,
        key: str,
        folder: Path,
        entry: dict,
        tensors: dict[str, str],
        *,
        seconds: float,
        sha256: dict[str, str] | None = None,
    ) -> Artifact:
        """Write the manifest (last) into a finished build folder and move it into place.
        `tensors`: each tensor's digest, as the writer hashed it; or, for a folder of one
        file that is not a model (an export), `sha256`: that file's, which is then the
        artifact's digest. The caller holds the key's lock."""
        files = {}
        for p in sorted(folder.iterdir()):
            st = p.stat()
            files[p.name] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
        digests: dict[str, object] = {"tensors": dict(sorted(tensors.items()))}
        if sha256 is not None:
            assert len(sha256) == 1 and not tensors  # one file, and its hash is the digest
            digests = {"sha256": sha256}
        manifest = {
            "key": key,
            "entry": entry,
            "digest": "sha256:" + next(iter(sha256.values())) if sha256 else combine_digests(tensors),
            **digests,
            "files": files,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(seconds, 3),
            "mergepkg": __version__,
        }
        tmp = folder / (MANIFEST + ".tmp")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, folder / MANIFEST)
        self.root.mkdir(parents=True, exist_ok=True)
        target = self.path(key)
        if target.exists():  # a broken artifact being replaced (lock held: nobody reads it)
            self.discard(key)
        os.rename(folder, target)
        return Artifact(key, target, manifest)

    def discard(self, key: str) -> None:
        """Remove an artifact: first renamed out of `store/` (atomic), then deleted."""
        target = self.path(key)
        if target.exists():
            trash = self.temp_folder(f"{key}.discard.")
            os.rename(target, trash / "artifact")
            shutil.rmtree(trash, ignore_errors=True)

    @contextmanager
    def alone(self) -> Iterator[None]:
        """Held exclusively: no build runs in this store meanwhile, nor starts (`in_use`
        waits). Refused at once while one runs."""
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.home / "store.lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BuildError(
                    "a build is running in this store", hint="run `mergepkg cache gc` when it has finished"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def sweep(self, keep: set[str], *, dry_run: bool = False) -> tuple[list[Artifact], list[Path]]:
        """Remove artifacts whose key is not in `keep`, leftovers of killed builds, and
        folders of keys not in `keep` that hold no artifact (`_broken`). Returns what went
        (or would). Only inside `alone()` (store/gc.collect_garbage), with `keep` read there too: a build that ran
        between reading the roots and removing would lose the steps it committed."""
        gone = [a for a in self.all() if a.key not in keep]
        if not dry_run:
            for art in gone:
                with self.lock(art.key):
                    self.discard(art.key)
        leftovers = self.clean_tmp(dry_run=dry_run) + self._broken(keep, dry_run)
        if not dry_run and self.locks.is_dir():  # no build runs (we hold the store): no lock is held
            for f in self.locks.glob("*.lock"):
                f.unlink(missing_ok=True)
        return gone, leftovers

    def _broken(self, keep: set[str], dry_run: bool) -> list[Path]:
        """Folders under `store/` named by a key not in `keep` whose manifest is missing,
        not JSON or incomplete: no artifact (a commit renames a folder in only with its
        manifest complete), so nothing lists them. A manifest that cannot be read (another
        user's folder) is no sign of damage, and a kept key is never removed."""
        if not self.root.is_dir():
            return []
        broken = [p for p in sorted(self.root.iterdir()) if p.name not in keep and self._damaged(p.name)]
        if not dry_run:
            for p in broken:
                with self.lock(p.name):
                    self.discard(p.name)
        return broken

    def _damaged(self, name: str) -> bool:
        """Whether `store/<name>` is a key's folder that holds no artifact for certain."""
        if not is_key(name):
            return False  # not ours (.DS_Store)
        try:
            return not _complete(self._manifest(name), name)
        except OSError:
            return False

    def clean_tmp(self, *, dry_run: bool = False) -> list[Path]:
        """Remove what killed builds left in `tmp/` (or `store/.tmp`, see `tmp`): folders
        whose key no live build holds (a build makes and fills its folder under the key's
        lock). Returns them."""
        stale = []
        for tmp in self.staging:  # wherever a build staged
            if not tmp.is_dir():
                continue
            for p in sorted(tmp.iterdir()):
                try:
                    with self.lock(p.name.split(".", 1)[0]).acquire(timeout=0):
                        stale.append(p)
                        if not dry_run:
                            shutil.rmtree(p, ignore_errors=True)
                except filelock.Timeout:
                    continue  # being built right now
        return stale

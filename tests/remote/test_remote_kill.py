"""Pushes interrupted at any moment never leave an artifact a reader takes broken
(issue 16): processes pushing to file:// killed with SIGKILL after seeded delays, and
a filesystem that fails after N writes; concurrent pushers in processes."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from fsspec.implementations.memory import MemoryFileSystem
from remotes import make_artifact

from mergepkg.remote.store import Remote
from mergepkg.remote.sync import open_remote, push_artifact, record_for, substitute
from mergepkg.store.local import Store

pytestmark = pytest.mark.slow  # subprocesses

# pushes one artifact slowly (16 KiB writes, 2 ms each) so that a kill lands inside it
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from mergepkg.remote import transfer
    from mergepkg.remote.record import parse_record
    from mergepkg.remote.sync import open_remote

    transfer.CHUNK = 16 << 10
    folder, record_file, url, slow = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4] == "slow"
    remote = open_remote(url, threads=2)
    data = record_file.read_bytes()
    record = parse_record(data, where=url, key=record_file.stem)
    print("ready", flush=True)
    remote.push(folder, record, progress=(lambda *a: time.sleep(0.002)) if slow else None)
    print("pushed", flush=True)
    """
)


def pusher(tmp_path: Path, art, url: str, slow: bool = True) -> list[str]:
    """The command line of a child that pushes `art` to `url`. Its script and record are
    written here, once: rewriting them while an earlier child starts would let it read
    an empty script and exit 0 having done nothing."""
    record_file = tmp_path / f"{art.key}.json"
    record_file.write_bytes(record_for(art).to_bytes())
    script = tmp_path / "push_child.py"
    script.write_text(CHILD)
    return [sys.executable, str(script), str(art.folder), str(record_file), url, "slow" if slow else "fast"]


def spawn(command: list[str]) -> subprocess.Popen:
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def readable_is_whole(remote: Remote, art, home: Path) -> bool:
    """Whether the remote has the key; if it has, a fresh home pulls it intact."""
    if not remote.has(art.key):
        return False
    got = substitute(remote, Store(home), art.key, expected_digest=art.digest)
    assert got.digest == art.digest and got.holds()
    return True


def test_pushes_killed_at_seeded_moments_never_leave_a_broken_artifact(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    url = f"file://{shared}"
    remote = open_remote(url)
    art = make_artifact(Store(tmp_path / "a"), 20, rows=128, shards=4)  # 1 MiB in four shards
    rng = random.Random(16)
    command = pusher(tmp_path, art, url)
    outcomes = []
    for i in range(20):
        proc = spawn(command)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        whole = readable_is_whole(remote, art, tmp_path / f"b{i}")
        files = [p for p in (shared / "artifacts").rglob("*") if p.is_file()] if (shared / "artifacts").exists() else []
        outcomes.append((whole, len(files)))
        if whole:  # start again from nothing, so later kills land in a push again
            for p in sorted(shared.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
    assert any(not whole and n for whole, n in outcomes), outcomes  # some kills landed mid-push
    # what the killed pushes left is picked up: the next push moves only what is missing
    report = push_artifact(remote, art)
    assert remote.has(art.key) and report.nbytes <= art.size
    assert readable_is_whole(remote, art, tmp_path / "final")


def test_four_pushing_processes_of_one_key_leave_one_intact_artifact(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    url = f"file://{shared}"
    art = make_artifact(Store(tmp_path / "a"), 21, rows=128, shards=4)
    command = pusher(tmp_path, art, url, slow=False)
    procs = [spawn(command) for _ in range(4)]
    outs = [(*p.communicate(timeout=120), p.returncode) for p in procs]  # (stdout, stderr, rc)
    assert all(rc == 0 and "pushed" in out for out, _, rc in outs), outs
    remote = open_remote(url)
    assert remote.keys() == [art.key] and readable_is_whole(remote, art, tmp_path / "b")
    assert not [p for p in shared.rglob("*.tmp")]


class FailingFS(MemoryFileSystem):
    """memory:// that fails on its `budget`-th write (an open for writing, a pipe, a move):
    a network that drops in the middle of a push."""

    protocol = "failing"

    def __init__(self, budget: int, **kw):
        super().__init__(**kw)
        self.budget = budget

    def _spend(self) -> None:
        self.budget -= 1
        if self.budget < 0:
            raise OSError("connection reset (injected)")

    def _open(self, path, mode="rb", *args, **kw):
        if "w" in mode:
            self._spend()
        return super()._open(path, mode, *args, **kw)

    def pipe_file(self, path, value, *args, **kw):
        self._spend()
        return super().pipe_file(path, value, *args, **kw)

    def mv(self, path1, path2, *args, **kw):
        self._spend()
        return super().mv(path1, path2, *args, **kw)


def test_a_push_failing_after_any_number_of_writes_leaves_no_record(tmp_path):
    art = make_artifact(Store(tmp_path / "a"), 22, shards=3)
    root = f"/failing-{uuid.uuid4().hex[:8]}/cache"
    plain = Remote(MemoryFileSystem(), root)
    writes = 0
    for budget in range(64):
        remote = Remote(FailingFS(budget), root, threads=1)
        try:
            remote.push(art.folder, record_for(art))
        except OSError:
            assert not plain.has(art.key)  # failed: no record
            continue
        writes = budget
        break
    assert writes >= 4  # three files and the record, each a write and a move
    assert readable_is_whole(plain, art, tmp_path / "b")
    plain.fs.rm(root.split("/")[1], recursive=True)

"""errors.py: errors carry their fields and subclass the builtins a caller expects; the
machine's refusals of a write become DiskErrors with a hint, nothing else does."""

from __future__ import annotations

import errno
import os

import pytest

from mergepkg.errors import DISK_HINTS, DiskError, MergepkgError, disk_error


@pytest.mark.parametrize("code", sorted(DISK_HINTS))
def test_each_refusal_of_the_machine_is_a_disk_error_with_a_hint(code):
    e = OSError(code, os.strerror(code), "/store/tmp/x/model.safetensors")
    disk = disk_error(e, "writing the step into /store/tmp/x")
    assert isinstance(disk, DiskError) and isinstance(disk, OSError) and isinstance(disk, MergepkgError)
    assert disk.errno == code and disk.filename == e.filename
    assert (
        disk.message == f"{os.strerror(code)} while writing the step into /store/tmp/x (/store/tmp/x/model.safetensors)"
    )
    assert disk.hint == DISK_HINTS[code]


def test_a_write_without_a_file_name_says_what_it_was_doing():
    disk = disk_error(OSError(errno.ENOSPC, "No space left on device"))
    assert disk is not None and disk.message == "No space left on device"
    assert "mergepkg cache gc" in (disk.hint or "")


@pytest.mark.parametrize(
    "e",
    [
        FileNotFoundError(errno.ENOENT, "No such file or directory", "x"),
        OSError("no errno"),
    ],
)
def test_other_os_errors_are_not_the_machines_refusals(e):
    assert disk_error(e) is None


def test_a_disk_error_is_kept_as_it_is():
    disk = DiskError("No space left on device", hint="h")
    assert disk_error(disk, "doing something else") is disk


def test_a_copy_refused_names_its_destination_not_its_source():
    """shutil's copy sets filename to the source: it read as if the model's disk were full."""
    disk = disk_error(OSError(errno.ENOSPC, "No space left on device", "/models/base/x.json", None, "/tmp/KEY/x.json"))
    assert disk is not None and disk.message.endswith("(/tmp/KEY/x.json)")


def test_an_error_placed_at_a_key_of_another_file_keeps_its_own_file_and_line():
    """A task file's bad line, placed at its entry in a tune file, lost its line number."""
    e = MergepkgError("expected a JSON object", file="val.jsonl", line=3).at(file="t.toml", line=13, key="k[0]")
    assert str(e) == "t.toml:13: k[0]: val.jsonl:3: expected a JSON object"
    e = MergepkgError("no examples", file="val.jsonl").at(file="t.toml", line=13, key="k[0]")
    assert str(e) == "t.toml:13: k[0]: val.jsonl: no examples"

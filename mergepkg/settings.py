"""Settings from the environment, overridable by CLI flags; the home's folder and the
config files in it (`registries.toml`, `remotes.toml`), read with one located error each."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mergepkg._toml import tomllib
from mergepkg.errors import DISK_HINTS, MergepkgError, StoreError, disk_error


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    home: Path = field(
        default_factory=lambda: Path(os.environ.get("MERGEPKG_HOME") or "~/.cache/mergepkg").expanduser()
    )
    offline: bool = field(
        default_factory=lambda: _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("MERGEPKG_OFFLINE"))
    )
    # registries: only MERGEPKG_OFFLINE or --offline (HF_HUB_OFFLINE is about the Hub alone)
    registry_offline: bool = field(default_factory=lambda: _truthy(os.environ.get("MERGEPKG_OFFLINE")))
    hf_cache: str | None = field(default_factory=lambda: os.environ.get("HF_HUB_CACHE"))  # None: hub's default
    device: str = "cpu"
    max_shard_bytes: int = 2 * 1024**3
    threads: int | None = None  # torch intra-op threads; None: torch's default (all cores)
    max_memory: int | None = None  # bytes the engine aims to stay under (memory.py); None: no limit
    # a llama.cpp source tree, for GGUF exports (docs/export.md): its converter and gguf-py
    llama_cpp: Path | None = field(
        default_factory=lambda: Path(v).expanduser() if (v := os.environ.get("MERGEPKG_LLAMA_CPP")) else None
    )

    def __post_init__(self) -> None:
        # a caller's `Settings(home="/data/mergepkg")`: paths, as the environment's are
        object.__setattr__(self, "home", Path(self.home).expanduser())
        if self.llama_cpp is not None:
            object.__setattr__(self, "llama_cpp", Path(self.llama_cpp).expanduser())


HOME_HINT = "point MERGEPKG_HOME at a folder"


def home_not_a_folder(home: Path) -> StoreError:
    """The one error for a MERGEPKG_HOME that is a file (or lies under one), whichever
    command meets it first: the store's, the registries' or the remotes'."""
    return StoreError("MERGEPKG_HOME is not a folder", file=str(home), hint=HOME_HINT)


def make_home(home: Path) -> Path:
    """`home`, made where it is missing. A file in its place is `home_not_a_folder`; a
    place no folder can be made (a read-only disk, `/proc`) one located error, not an
    OSError's traceback."""
    try:
        home.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise home_not_a_folder(home) from None
    except OSError as e:
        if (disk := disk_error(e, "making MERGEPKG_HOME")) is not None:
            raise disk from None
        raise StoreError(f"cannot make MERGEPKG_HOME: {e.strerror or e}", file=str(home), hint=HOME_HINT) from None
    return home


def read_config(
    settings: Settings, name: str, *, what: str, error: type[MergepkgError], hint: str
) -> tuple[Path, dict]:
    """The TOML file `name` in the home (edited by hand by design) and its table, `{}`
    where there is none. Whatever stops it being read is one error located at the file
    (`error`, saying `what` it is), or the home's own where the home is not a folder;
    its shape is the caller's to check."""
    path = settings.home / name
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return path, {}
    except NotADirectoryError:
        raise home_not_a_folder(settings.home) from None
    except IsADirectoryError:
        raise error(f"cannot read the {what}: it is a folder, not a file", file=path, hint=hint) from None
    except UnicodeDecodeError as e:
        raise error(f"cannot read the {what}: not UTF-8 text (byte {e.start})", file=path, hint=hint) from None
    except OSError as e:
        raise error(
            f"cannot read the {what}: {e.strerror or e}", file=path, hint=DISK_HINTS.get(e.errno or 0, hint)
        ) from None
    try:
        return path, tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError) as e:
        raise error(f"cannot read the {what}: {e}", file=path, hint=hint) from None


def url_tables(
    data: dict, table: str, *, path: Path, error: type[MergepkgError], hint: str, strings: tuple[str, ...] = ()
) -> dict:
    """`data[table]` checked as `[TABLE.NAME]` tables, each with a `url` string (and the
    keys `strings` names strings where present): what `registries.toml` and `remotes.toml`
    both hold, so that an entry edited by hand is an error located there, not a KeyError."""
    tables = data.get(table, {})
    if not isinstance(tables, dict):
        raise error(f"expected [{table}.NAME] tables with a url", file=path, key=table, hint=hint)
    for name, entry in tables.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise error(
                f"expected a [{table}.NAME] table with a url string", file=path, key=f"{table}.{name}", hint=hint
            )
        for key in strings:
            if not isinstance(entry.get(key, ""), str):
                raise error("expected a string", file=path, key=f"{table}.{name}.{key}", hint=hint)
    return tables

"""Settings from the environment, overridable by CLI flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


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

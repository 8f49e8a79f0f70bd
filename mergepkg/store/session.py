"""A session: the settings a command runs with, and what lives under `$MERGEPKG_HOME`."""

from __future__ import annotations

from pathlib import Path

from mergepkg.settings import Settings
from mergepkg.store.hashcache import HashCache
from mergepkg.store.local import Store


class Session:
    """What a command works with: settings, the store and the file hash cache (under
    `home`, default the settings' home: `verify --rebuild` builds into a scratch one)."""

    def __init__(self, settings: Settings | None = None, *, home: Path | None = None):
        self.settings = settings or Settings()
        home = home or self.settings.home
        self.store = Store(home)
        self.hashes = HashCache(home / "hashes.sqlite")

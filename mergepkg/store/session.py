"""A session: the settings a command runs with, and what lives under `$MERGEPKG_HOME`."""

from __future__ import annotations

from mergepkg.settings import Settings
from mergepkg.store.hashcache import HashCache
from mergepkg.store.local import Store


class Session:
    """What a command works with: settings, the store and the file hash cache."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or Settings()
        self.store = Store(self.settings.home)
        self.hashes = HashCache(self.settings.home / "hashes.sqlite")

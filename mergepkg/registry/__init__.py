"""The registry: published recipes by name and version.

`index.py` is the static format, `semver.py` versions and ranges, `folder.py` writes a
registry folder (publish, yank), `client.py` reads registries (folders and HTTP, with
ETags), `tokens.py` and `server.py` serve a folder to a team, and `packages.py` holds
what the commands do (search, info, install, publish, yank). Dependency resolution for
recipes lives in `mergepkg/dependencies.py`. See docs/registry.md.
"""

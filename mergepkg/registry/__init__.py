"""The registry: published recipes by name and version.

`index.py` is the static format, `client.py` reads registries (folders and HTTP, with
ETags), `pick.py` picks one version per package for a dependency graph and
`dependencies.py` installs a recipe's `[dependencies]` with it; `folder.py` writes a
registry folder (publish, yank), `tokens.py` and `server.py` serve a folder to a team,
and `packages.py` holds what the commands do (search, info, install, publish, yank).
Names and versions are `recipe/names.py` and `recipe/versions.py`. See docs/registry.md.
"""

"""Configured remotes and trusted keys: `$MERGEPKG_HOME/remotes.toml`.

```toml
trusted-public-keys = ["team:BASE64..."]   # whose signatures admit unpinned steps

[remotes.team]
url = "s3://bucket/mergepkg"
```

A remote's URL is `file://` (or a plain folder), `s3://`, `hf://` or `memory://`.
Credentials are never written here: each backend reads its usual environment and
config (AWS_* and ~/.aws for S3, HF_TOKEN and the Hub's login for hf://).
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import tomli_w

from mergepkg.errors import did_you_mean
from mergepkg.files import write_atomic
from mergepkg.recipe.names import NAME_HINT, is_name
from mergepkg.remote.errors import EXTRA_HINT, RemoteConfigError
from mergepkg.remote.sign import parse_public_key
from mergepkg.settings import Settings, make_home, read_config, url_tables

SCHEMES = ("file", "s3", "hf", "memory")


@dataclass(frozen=True)
class RemoteConfig:
    name: str
    url: str


def config_path(settings: Settings) -> Path:
    return settings.home / "remotes.toml"


def _read(settings: Settings) -> dict:
    hint = "fix or delete it, then add the remotes again"
    path, data = read_config(settings, "remotes.toml", what="remote list", error=RemoteConfigError, hint=hint)
    remotes = url_tables(data, "remotes", path=path, error=RemoteConfigError, hint=hint)
    keys = data.get("trusted-public-keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise RemoteConfigError(
            "expected a list of NAME:BASE64 strings", file=path, key="trusted-public-keys", hint=hint
        )
    return {"remotes": remotes, "trusted-public-keys": keys}


def _save(settings: Settings, remotes: list[RemoteConfig], trusted: list[str]) -> None:
    doc: dict = {}
    if trusted:
        doc["trusted-public-keys"] = trusted
    doc["remotes"] = {r.name: {"url": r.url} for r in remotes}
    make_home(settings.home)  # one located error where it is a file or cannot be made
    write_atomic(config_path(settings), tomli_w.dumps(doc))


def configured(settings: Settings) -> list[RemoteConfig]:
    """The configured remotes, in the order they were added."""
    return [RemoteConfig(n, r["url"]) for n, r in _read(settings).get("remotes", {}).items()]


def trusted_keys(settings: Settings) -> list[str]:
    """The public keys (`name:base64`) whose signatures admit a step the lock does not pin,
    each checked: one edited by hand that is no key is an error located at remotes.toml
    (`trusted-public-keys[i]`), not one raised later without a place."""
    keys = _trusted(settings)
    for i, key in enumerate(keys):
        try:
            parse_public_key(key, where=str(config_path(settings)))
        except RemoteConfigError as e:
            e.key = f"trusted-public-keys[{i}]"
            raise
    return keys


def _trusted(settings: Settings) -> list[str]:
    """The trusted keys as written, unchecked: what `untrust` edits (a bad one included)."""
    return list(_read(settings).get("trusted-public-keys", []))


def configured_url(settings: Settings, name: str) -> str:
    """The URL of the configured remote `name`, checked as `add_remote` checks one; a URL
    edited by hand into remotes.toml that is not one is an error located there."""
    url = get_remote(settings, name).url
    try:
        return normalize_url(url)
    except RemoteConfigError as e:
        raise locate(settings, name, url, e) from None


def locate(settings: Settings, name: str, url: str, e: RemoteConfigError) -> RemoteConfigError:
    """`e` (about `url`) located at remotes.toml's `remotes.NAME.url` where `url` is what
    that entry says; as it is otherwise (a recipe's own remote, a URL given by hand)."""
    if e.file is None and any(r.name == name and r.url == url for r in configured(settings)):
        e.file, e.key = str(config_path(settings)), f"remotes.{name}.url"
    return e


def get_remote(settings: Settings, name: str) -> RemoteConfig:
    remotes = configured(settings)
    for r in remotes:
        if r.name == name:
            return r
    raise RemoteConfigError(
        f"no remote named {name!r}",
        file=config_path(settings),
        hint=did_you_mean(name, [r.name for r in remotes]) or "add one with `mergepkg remote add NAME URL`",
    )


def add_remote(settings: Settings, name: str, url: str) -> RemoteConfig:
    """Configure remote `name` at `url` (checked, written in one spelling)."""
    if not is_name(name):
        raise RemoteConfigError(f"invalid remote name {name!r}", hint=NAME_HINT)
    remotes = configured(settings)
    if any(r.name == name for r in remotes):
        raise RemoteConfigError(
            f"a remote named {name!r} is already configured",
            file=config_path(settings),
            hint="remove it first, or pick another name",
        )
    remote = RemoteConfig(name, normalize_url(url))
    _save(settings, [*remotes, remote], _trusted(settings))
    return remote


def remove_remote(settings: Settings, name: str) -> RemoteConfig:
    """Forget remote `name` (nothing on the remote is touched); returns what it was."""
    gone = get_remote(settings, name)
    _save(settings, [r for r in configured(settings) if r.name != name], _trusted(settings))
    return gone


def trust_key(settings: Settings, public_key: str) -> str:
    """Trust signatures by `public_key` (`name:base64`); returns the key's name."""
    name, _ = parse_public_key(public_key)
    trusted = _trusted(settings)
    same = [k for k in trusted if k.partition(":")[0] == name]
    if same and same != [public_key.strip()]:
        raise RemoteConfigError(
            f"another key named {name!r} is trusted", file=config_path(settings), hint="untrust it first"
        )
    if not same:
        _save(settings, configured(settings), [*trusted, public_key.strip()])
    return name


def untrust_key(settings: Settings, name: str) -> None:
    """Stop trusting the key named `name`."""
    trusted = _trusted(settings)
    kept = [k for k in trusted if k.partition(":")[0] != name]
    if len(kept) == len(trusted):
        raise RemoteConfigError(
            f"no trusted key named {name!r}",
            file=config_path(settings),
            hint=did_you_mean(name, [k.partition(":")[0] for k in trusted]),
        )
    _save(settings, configured(settings), kept)


def normalize_url(url: str) -> str:
    """`url` checked and in one spelling: a plain folder becomes `file:///abs/path`; the
    scheme must be known, its fsspec backend installed and the URL name a place."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "file", url
    if scheme not in SCHEMES:
        raise RemoteConfigError(f"unknown remote scheme {scheme!r} in {url!r}", hint=did_you_mean(scheme, SCHEMES))
    if scheme == "file":
        folder = (Path(urllib.parse.unquote(rest)) if sep else Path(rest)).expanduser().resolve()
        if not folder.is_dir():
            raise RemoteConfigError(f"no such folder: {folder}", hint="create it first (a shared disk's folder)")
        return file_url(folder)
    parts = [p for p in rest.split("/") if p]
    if scheme == "s3" and not parts:
        raise RemoteConfigError(f"no bucket in {url!r}", hint="s3://BUCKET[/PREFIX]")
    if scheme == "hf":
        typed = parts[:1] in (["datasets"], ["models"], ["spaces"])
        if len(parts) < 2 + typed or "@" in rest:
            raise RemoteConfigError(
                f"not a Hub repository URL: {url!r}", hint="hf://datasets/ORG/NAME[/PREFIX] or hf://ORG/NAME[/PREFIX]"
            )
    if any(p in (".", "..") for p in parts):
        raise RemoteConfigError(f"'.' and '..' are not allowed in a remote URL: {url!r}")
    normal = f"{scheme}://{'/'.join(parts)}"
    check_backend(normal)
    return normal


def file_url(folder: Path) -> str:
    """`file://` and the absolute `folder`, its `%` written `%25`: a file URL is decoded
    once when read (`folder_of`), so a folder whose name holds `%41` stays that folder
    however often the URL is normalised again (a plain path is never decoded)."""
    return "file://" + str(folder).replace("%", "%25")


def folder_of(url: str) -> Path:
    """The folder a normalised `file://` URL names (`file_url`'s inverse)."""
    return Path(urllib.parse.unquote(url.partition("://")[2]))


def check_backend(url: str) -> None:
    """That fsspec can open `url`'s scheme here (its package installed), without
    touching the network; a hint names the extra to install."""
    try:
        import fsspec

        fsspec.get_filesystem_class(url.partition("://")[0])
    except ImportError as e:
        raise RemoteConfigError(f"cannot open {url}: {e}", hint=EXTRA_HINT) from None
    except ValueError as e:
        raise RemoteConfigError(f"cannot open {url}: {e}") from None

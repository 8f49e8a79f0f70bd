"""The registry commands' own behaviour: what they print and refuse (the registry
itself is tested in tests/registry/)."""

from __future__ import annotations

import json
import subprocess

from helpers import MERGEPKG, cli


def test_a_token_nobody_could_read_is_not_kept(tmp_path, capsys):
    """Printed to a full disk, the token was saved all the same: a live secret nobody
    had, and the retry refused ("a token labelled 'ci' exists")."""
    root = tmp_path / "reg"
    assert cli(capsys, "registry", "init", root, "--name", "team")[0] == 0
    with open("/dev/full", "w") as full:
        made = subprocess.run(
            [MERGEPKG, "registry", "token", "create", str(root), "--label", "ci"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
        )
    assert made.returncode == 1 and "No space left" in made.stderr, made.stderr
    held = json.loads((root / ".mergepkg/tokens.json").read_text())["tokens"]
    assert [t["label"] for t in held] == []
    code, out, err = cli(capsys, "registry", "token", "create", root, "--label", "ci")
    assert code == 0 and out.startswith("mpk_"), err


def test_serve_refuses_limits_that_would_answer_nobody(tmp_path, capsys):
    """`--per-client 0` dropped every connection and `--max-connections 0` accepted none,
    after saying it was serving (`--port 0` means "a free one", so 0 reads as "no limit")."""
    root = tmp_path / "reg"
    assert cli(capsys, "registry", "init", root, "--name", "team")[0] == 0
    for option in ("--per-client", "--max-connections", "--request-timeout"):
        code, _, err = cli(capsys, "registry", "serve", root, "--port", "0", option, "0")
        assert code == 2 and option in err and "serving" not in err, (option, err)

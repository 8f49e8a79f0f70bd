"""`[publish]`: where `mergepkg push` sends a built output on the Hugging Face Hub.

    [publish]
    repo = "org/name"         # the model repo (created on the first push)
    private = true            # only when the repo is created; default: the Hub's (public)
    step = "merged"           # default: the recipe's only output
    commit_message = "..."    # default: names the recipe, step and key

None of it changes what is built: the table is in no step key, recipe hash or lock.
"""

from __future__ import annotations

import re
from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.recipe.model import Publish
from mergepkg.recipe.tables import TableReader

# ORG/NAME as huggingface_hub's validate_repo_id takes repo ids (not imported: the parser
# runs on every command): 1-96 of letters, digits, '-', '_', '.', starting and ending with
# a letter, digit or '_'; no '--' or '..'; not ending in '.git' (tests/recipe hold it to hub's)
_PART = r"(?=[A-Za-z0-9_])[A-Za-z0-9._-]{1,96}(?<=[A-Za-z0-9_])"
HUB_REPO = re.compile(f"{_PART}/{_PART}")


def hub_repo_problem(repo: str) -> str | None:
    """Why `repo` is not a Hub model repo id (ORG/NAME), or None."""
    if not HUB_REPO.fullmatch(repo) or "--" in repo or ".." in repo or repo.endswith(".git"):
        return f"not a Hub repo id: {repo!r}"
    return None


def publish_table(reader: TableReader, value: Any, steps: dict) -> Publish:
    """The `[publish]` table read with located errors; `steps` the recipe's steps."""
    if value is None:
        return Publish()
    table = reader.expect(value, dict, "publish", "a [publish] table")
    reader.only_keys(table, ("repo", "private", "step", "commit_message"), "publish")
    repo = table.get("repo")
    if repo is not None:
        reader.expect(repo, str, "publish.repo", 'a Hub repo id like "org/name"')
        if (problem := hub_repo_problem(repo)) is not None:
            raise reader.error("publish.repo", problem, 'a model repo id like "org/name"')
    private = table.get("private")
    if private is not None:
        reader.expect(private, bool, "publish.private", "true or false")
    step = table.get("step")
    if step is not None:
        reader.expect(step, str, "publish.step", "a step name")
        if step not in steps:
            raise reader.error("publish.step", f"no step named {step!r}", did_you_mean(step, steps))
    message = table.get("commit_message")
    if message is not None and (not isinstance(message, str) or not message.strip()):
        raise reader.error("publish.commit_message", "expected a non-empty string")
    return Publish(repo, private, step, message)

"""The trial log: `trials.jsonl` in the search's folder, one line per finished trial.

The first line names the search (`fingerprint` of the recipe, space, objective,
sampler and seed); each further line is a `Trial`, appended and flushed as it finishes.
A search that was killed resumes from it: finished trials are read back, not redone,
and the last line, when a kill cut it short, is dropped and its trial redone. A log of
another search, or with a damaged line anywhere else, or a trial out of its turn (two
runs appending to one log), is refused at that line. One run at a time holds the
search's folder (`held`): a second fails at once rather than logging the same trials.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING

from mergepkg._lazy import lazy_import
from mergepkg.errors import BuildError, RecipeError

if TYPE_CHECKING:
    import filelock
else:
    filelock = lazy_import("filelock")  # by the first search: not by `validate`, which imports the CLI


@dataclass(frozen=True)
class Trial:
    number: int  # from 0, in the order the sampler asked
    values: dict  # recipe key path -> number or gradient
    unit: list[float]  # the sampler's point (checked on resume)
    key: str  # the store key of the scored step
    scores: dict  # validation task name -> value
    objective: float  # the scores combined (higher is better)
    build_s: float
    eval_s: float
    stored: bool  # the key was in the store already: nothing was built
    finished: float  # unix time
    digest: str | None = None  # the scored step's digest (absent from older logs)
    node: str = ""  # the Ray node it ran on (`tune --ray`); "" here


RESTART_HINT = "pass --restart to discard it, or move it away"
NUMBER = (int, float)  # json.loads reads 2.0 written as 2 as an int; -inf is a float
FIELD_TYPES = {
    "number": (int,), "values": (dict,), "unit": (list,), "key": (str,), "scores": (dict,), "objective": NUMBER,
    "build_s": NUMBER, "eval_s": NUMBER, "stored": (bool,), "finished": NUMBER, "digest": (str, type(None)),
    "node": (str,),
}  # fmt: skip
assert FIELD_TYPES.keys() == {f.name for f in fields(Trial)}  # a field added to Trial is typed here too


def _trial(line: str) -> Trial | None:
    """A logged trial, each field of its type (a bool only where one belongs); None for a
    line that is none."""
    try:
        trial = Trial(**json.loads(line))
    except (ValueError, TypeError, RecursionError):
        return None
    typed = all(
        isinstance(v, FIELD_TYPES[k]) and isinstance(v, bool) == (k == "stored") for k, v in asdict(trial).items()
    )
    return trial if typed else None


class TrialLog:
    def __init__(self, path: Path, fingerprint: str):
        self.path, self.fingerprint = path, fingerprint

    def read(self) -> list[Trial]:
        """The finished trials, or none for a new search."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        if not lines:
            return []
        try:
            head = json.loads(lines[0])
        except (ValueError, RecursionError):
            head = None
        if not isinstance(head, dict) or "search" not in head:
            raise RecipeError("the trial log's first line is not its header", file=self.path, line=1, hint=RESTART_HINT)
        if head.get("search") != self.fingerprint:
            raise RecipeError(
                "the trial log is of another search (the recipe, space, objective or sampler changed)",
                file=self.path,
                hint=RESTART_HINT,
            )
        trials: list[Trial] = []
        for number, line in enumerate(lines[1:], 2):
            trial = _trial(line)
            if trial is None and number == len(lines):  # the last line, cut short by a kill: redone
                break
            if trial is None:
                raise RecipeError("not a trial as the log writes one", file=self.path, line=number, hint=RESTART_HINT)
            if trial.number != len(trials):  # resumed, it would be told to the sampler in another's turn
                raise RecipeError(
                    f"trial {trial.number} where trial {len(trials)} was due (two runs appending at once?)",
                    file=self.path,
                    line=number,
                    hint=RESTART_HINT,
                )
            trials.append(trial)
        return trials

    def start(self, trials: list[Trial]) -> None:
        """Write the header and `trials` (those read back), dropping anything after them."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = [json.dumps({"search": self.fingerprint})] + [json.dumps(asdict(t)) for t in trials]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.path)

    def append(self, trial: Trial) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(asdict(trial)) + "\n")
            f.flush()
            os.fsync(f.fileno())


@contextmanager
def held(folder: Path, tune_file: Path) -> Iterator[None]:
    """The search's folder, this run's alone while it runs: two runs of one tune file would
    each append the trials they ask, the same numbers twice, to one log. A second run
    fails at once (an OS lock: a killed run holds none)."""
    folder.mkdir(parents=True, exist_ok=True)
    # one instance a path in this process, counting: `api.tune` holds it from the search to
    # the end of `finish`, which hold it too
    lock = filelock.FileLock(folder / ".running.lock", timeout=0, is_singleton=True)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise BuildError(
            f"another run of {tune_file.name} is searching or finishing in {folder}",
            file=tune_file,
            hint="wait for it to end (or stop it): one run at a time writes a search's log",
        ) from None
    try:
        yield
    finally:
        lock.release()

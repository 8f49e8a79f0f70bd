"""lm-evaluation-harness tasks (`lm-eval`, the `harness` extra) through its Python API.

A `HarnessTask` is a task lm-eval knows: a registered benchmark (`mmlu`, `gsm8k`,
`hellaswag`, ...) or one defined by a YAML in an `include` folder (which may read a
local JSONL through `dataset_path: json`; the folder is indexed alone, without
lm-eval's own tasks). Its evaluation key, the `sha256` results
are cached under (`store/evals.py`), is the sha256 of: lm-eval's version, the task's
resolved config, the data's identity (the sha256 of local data files, globs expanded,
or of every file under a local `dataset_path` folder; else the dataset's path, name and
`revision`), the few-shot count, the limit, the seed and the metric. Loading a task
reads its config and data only, and refuses what would fail after the model ran: a tag
(several tasks, no one score), a group without an aggregate score, a `metric` the task
does not report. The model runs in `run_harness`.
"""

from __future__ import annotations

import functools
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import RecipeError, did_you_mean
from mergepkg.store.evals import Result
from mergepkg.store.hashcache import HashCache

_SKIP = {"alias", "name", "sample_len", " ", "samples"}


@dataclass(frozen=True)
class HarnessTask:
    name: str  # the lm-eval task (or group) name
    sha256: str  # the evaluation key
    include: Path | None
    num_fewshot: int | None
    limit: int | None
    seed: int
    metric: str | None  # lm-eval's result key ("exact_match,none"); None: the first one
    test_split: bool  # a registered benchmark scored on its test split

    @property
    def path(self) -> Path:  # what a task file would show in messages
        return self.include / self.name if self.include else Path(self.name)

    @property
    def key(self) -> str:
        """What its results are cached under: the evaluation key."""
        return self.sha256


@functools.lru_cache(maxsize=8)
def _manager(include: str | None) -> Any:
    try:
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise RecipeError("lm-eval tasks need lm-evaluation-harness", hint="pip install 'mergepkg[harness]'") from None
    # a folder of our own YAMLs is indexed alone: indexing lm-eval's hundreds of tasks takes seconds
    return TaskManager(include_path=include, include_defaults=False) if include else TaskManager()


def _plain(obj: Any) -> Any:
    """The config as JSON: functions by their qualified name (their repr holds an address)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=lambda o: getattr(o, "__qualname__", type(o).__name__)))


def _packaged() -> set[str]:
    """The builder names `datasets` takes before any folder of that name (`json`, `csv`)."""
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # a `datasets` that moved it: the usual ones
        return {"json", "csv", "parquet", "text", "arrow", "pandas"}
    return set(_PACKAGED_DATASETS_MODULES)


def _patterns(files: Any) -> list[str] | None:
    """`data_files` as HF datasets takes it (a path, a list, a split -> path(s) table) as
    its patterns; None for another shape (left to the config's text)."""
    groups = files.values() if isinstance(files, dict) else [files]
    out: list[str] = []
    for group in groups:
        items = [group] if isinstance(group, str) else group
        if not isinstance(items, list) or not all(isinstance(p, str) for p in items):
            return None
        out += items
    return out


def _expand(pattern: str, base: Path, where: str) -> list[Path]:
    """The local files a data_files pattern names (relative to `base`, globs expanded as HF
    datasets expands them); [] for a URL (`hf://`, `https://`), which the config's text keys."""
    if "://" in pattern:
        return []
    path = base / Path(pattern).expanduser()
    if glob.has_magic(str(path)):
        found = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
        if not found:
            raise RecipeError(f"{where}: no data file matches {pattern!r}", file=base.resolve())
        return found
    if not path.is_file():
        raise RecipeError(f"{where}: data file not found: {pattern}", file=path.resolve())
    return [path]


def _data_identity(config: dict, hashes: HashCache, where: str) -> dict:
    """What the task's data is: local files by sha256 (their paths as HF datasets reads
    them: relative to the working directory, a builder's `data_dir` or a local
    `dataset_path` folder; globs expanded); a local `dataset_path` (or a builder's
    `data_dir`) folder without `data_files` by the sha256 of every file under it; else
    (a hub dataset) its path, name and revision, which a new upload does not change."""
    kwargs = config.get("dataset_kwargs") or {}
    path, data_dir = config.get("dataset_path"), kwargs.get("data_dir")
    sub = data_dir if isinstance(data_dir, str) else ""
    base: Path | None = None
    if isinstance(path, str) and path in _packaged():  # `json`, `csv`: files name themselves
        base = Path(sub).expanduser()
    elif isinstance(path, str) and Path(path).expanduser().is_dir():  # a local dataset folder
        base = Path(path).expanduser() / sub
    patterns = _patterns(kwargs.get("data_files")) if kwargs.get("data_files") else None
    if base is not None and patterns:
        found = sorted((p for pattern in patterns for p in _expand(pattern, base, where)), key=str)
        return {"files": [hashes.sha256(p)[1] for p in found]}
    if base is not None and base != Path() and base.is_dir():
        files = sorted(p for p in base.rglob("*") if p.is_file() and not _hidden(p.relative_to(base)))
        return {"folder": [[p.relative_to(base).as_posix(), hashes.sha256(p)[1]] for p in files]}
    return {"path": path, "name": config.get("dataset_name"), "revision": kwargs.get("revision")}


def _hidden(relative: Path) -> bool:
    """A file HF datasets passes over when it lists a folder's data (`.git/`, `.cache/`)."""
    return any(part.startswith((".", "__")) for part in relative.parts)


def _result_keys(found: dict, name: str) -> set[str] | None:
    """The result keys lm-eval will report for `name` ("exact_match,none"), from its tasks'
    metrics and filters (a group: its aggregate metrics); None where lm-eval's objects do
    not say (the check is then left to the run)."""
    try:
        tasks = found["tasks"].values()
        filters = {f.name for t in tasks for f in t._filters}
        if name in found["groups"]:
            return {
                f"{agg.metric},{f}"
                for agg in found["groups"][name].aggregate_metric_list
                for f in agg.filter_list or filters
            }
        return {f"{m},{f.name}" for t in tasks for m in t._metric_fn_list for f in t._filters}
    except (AttributeError, KeyError, TypeError):
        return None


def load_harness_task(
    name: str,
    hashes: HashCache,
    *,
    include: Path | None = None,
    num_fewshot: int | None = None,
    limit: int | None = None,
    seed: int = 0,
    metric: str | None = None,
) -> HarnessTask:
    """The task `name` with its evaluation key (reads its config, not the model)."""
    import lm_eval

    manager = _manager(str(include.resolve()) if include else None)
    if name not in manager.all_tasks:
        raise RecipeError(
            f"lm-eval has no task {name!r}",
            hint=did_you_mean(name, manager.all_tasks) or "`include` a folder holding its YAML",
        )
    if name in manager.all_tags:
        within = sorted(getattr(manager.task_index.get(name), "tags", None) or ())
        raise RecipeError(
            f"{name!r} is an lm-eval tag: several tasks scored one by one, with no one score",
            hint=f"name one of its tasks ({', '.join(within[:8])}) per entry" if within else "name one of its tasks",
        )
    found = manager.load([name])
    group = found["groups"].get(name)
    if group is not None and not getattr(group, "has_aggregation", True):
        raise RecipeError(
            f"the lm-eval group {name!r} has no aggregate score (no aggregate_metric_list)",
            hint="name one of its tasks, or give the group an aggregate_metric_list",
        )
    keys = _result_keys(found, name)
    if metric is not None and keys is not None and metric not in keys:
        raise RecipeError(
            f"lm-eval task {name!r} reports no result {metric!r}",
            hint=did_you_mean(metric, keys) or f"it reports: {', '.join(sorted(keys))}",
        )
    configs = []
    for task in found["tasks"].values():
        config = _plain(task.config.to_dict())
        config.get("metadata", {}).pop("config_source", None)  # where the YAML lies is not what it is
        configs.append({"config": config, "data": _data_identity(config, hashes, f"lm-eval task {name!r}")})
    own = include is not None  # its YAMLs are ours (the include folder holds nothing else)
    benchmark_test = not own and any(c["config"].get("test_split") for c in configs)
    what = {
        "harness": lm_eval.__version__,
        "task": name,
        "configs": configs,
        "num_fewshot": num_fewshot,
        "limit": limit,
        "seed": seed,
        "metric": metric,
    }
    return HarnessTask(
        name, sha256_hex(canonical_json(what)), include, num_fewshot, limit, seed, metric, benchmark_test
    )


def run_harness(folder: Path, task: HarnessTask, device: str) -> Result:
    """Score the model in `folder` on `task` with lm-eval (greedy, seeded)."""
    import lm_eval

    manager = _manager(str(task.include.resolve()) if task.include else None)
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(folder), "dtype": "auto", "add_bos_token": True},
        tasks=[task.name],
        num_fewshot=task.num_fewshot,
        limit=task.limit,
        device=device,
        batch_size=32,
        task_manager=manager,
        random_seed=task.seed,
        numpy_random_seed=task.seed,
        torch_random_seed=task.seed,
        fewshot_random_seed=task.seed,
        bootstrap_iters=0,
        log_samples=False,
    )
    assert out is not None  # only other ranks of a distributed run get None
    row = out["results"][task.name]
    metrics = [k for k in row if k not in _SKIP and "_stderr" not in k and isinstance(row[k], int | float)]
    metric = task.metric or metrics[0]
    if metric not in row:
        raise RecipeError(f"lm-eval task {task.name!r} has no result {metric!r}", hint=f"it has: {', '.join(metrics)}")
    n = out.get("n-samples", {}).get(task.name, {}).get("effective", 0)
    return Result(task.name, metric, float(row[metric]), int(n))

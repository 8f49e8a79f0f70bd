"""lm-evaluation-harness tasks (`lm-eval`, the `harness` extra) through its Python API.

A `HarnessTask` is a task lm-eval knows: a registered benchmark (`mmlu`, `gsm8k`,
`hellaswag`, ...) or one defined by a YAML in an `include` folder (which may read a
local JSONL through `dataset_path: json`; the folder is indexed alone, without
lm-eval's own tasks). Its evaluation key, the `sha256` results
are cached under (`store/evals.py`), is the sha256 of: lm-eval's version, the task's
resolved config, the data's identity (the sha256 of local data files; else the
dataset's path, name and `revision`), the few-shot count, the limit, the seed and the
metric. Loading a task reads its config and data only; the model runs in `run_harness`.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergepkg.canonical import canonical_json, sha256_hex
from mergepkg.errors import RecipeError
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


def _data_identity(config: dict, hashes: HashCache) -> dict:
    kwargs = config.get("dataset_kwargs") or {}
    files = kwargs.get("data_files")
    if files:
        listed = files.values() if isinstance(files, dict) else [files]
        paths = sorted(str(p) for group in listed for p in ([group] if isinstance(group, str) else group))
        return {"files": [hashes.sha256(Path(p))[1] for p in paths]}
    return {"path": config.get("dataset_path"), "name": config.get("dataset_name"), "revision": kwargs.get("revision")}


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
        raise RecipeError(f"lm-eval has no task {name!r}", hint="`include` a folder holding its YAML")
    found = manager.load([name])["tasks"]
    configs = []
    for task in found.values():
        config = _plain(task.config.to_dict())
        config.get("metadata", {}).pop("config_source", None)  # where the YAML lies is not what it is
        configs.append({"config": config, "data": _data_identity(config, hashes)})
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

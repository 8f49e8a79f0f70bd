"""Samplers over the unit cube, one point per trial, deterministic from their seed.

- `cmaes`: CMA-ES (the `cmaes` package) started at the recipe's own values with step
  size 0.25 of each range, bounded to the cube, its default population (4 + 3 ln d).
  It asks a generation's points, is told their scores once all are known, and moves.
- `random`: uniform points (a baseline, and for spaces of one dimension).

Both are replayable: given the same seed and the same scores in the same order they
ask the same points, which is how a search resumes from its trial log.
"""

from __future__ import annotations

from typing import Any

SIGMA = 0.25


class Sampler:
    def __init__(self, kind: str, dims: int, seed: int, start: list[float]):
        import numpy as np

        self.kind = kind
        self._np = np
        self._pending: list[tuple[Any, float]] = []
        self._asked: list[Any] = []
        if kind == "cmaes":
            from cmaes import CMA

            bounds = np.array([[0.0, 1.0]] * dims)
            self._cma = CMA(mean=np.array(start, dtype=float), sigma=SIGMA, bounds=bounds, seed=seed)
        else:
            self._rng = np.random.default_rng(seed)
            self._dims = dims

    @property
    def generation(self) -> int:
        return self._cma.population_size if self.kind == "cmaes" else 1

    def ask(self) -> list[float]:
        x = self._cma.ask() if self.kind == "cmaes" else self._rng.uniform(0.0, 1.0, self._dims)
        self._asked.append(x)
        return [float(v) for v in x]

    def tell(self, score: float) -> None:
        """The score (higher is better) of the oldest point asked and not yet told."""
        x = self._asked.pop(0)
        if self.kind != "cmaes":
            return
        self._pending.append((x, -score))  # CMA-ES minimises
        if len(self._pending) == self._cma.population_size:
            self._cma.tell(self._pending)
            self._pending = []

"""DELLA: magnitude-ranked random pruning (MagPrune), rescale, TIES sign election.

Deep et al., "DELLA-Merging", https://arxiv.org/abs/2406.11617
Keep probabilities run from density - epsilon to density + epsilon by magnitude rank
within each row; both must lie in (0, 1). Randomness as in dare_ties.
Defaults as mergekit 0.1.5: normalize = true, rescale = true, epsilon = 0.15.
"""

from collections.abc import Mapping
from typing import Any

from mergepkg.methods import sparsify
from mergepkg.methods.spec import Param, Problem
from mergepkg.methods.task_vectors import make_method

EPSILON = Param(
    "epsilon",
    0.15,
    per_input=True,
    low=0.0,  # no upper bound of its own: `band_problem` checks the band an input draws from
    doc="half-width of the keep-probability band around density",
)


def band_problem(params: Mapping[str, Any]) -> Problem | None:
    """density ± epsilon outside (0, 1) for an input: what MagPrune refuses, found before a build.
    An input at density 1 (the default) is not pruned, so its band is never drawn from."""
    for i, (density, epsilon) in enumerate(zip(params["density"], params["epsilon"])):
        if density < 1 and not (density - epsilon > 0 and density + epsilon < 1):
            return Problem(
                f"input {i + 1}: della needs density ± epsilon inside (0, 1); "
                f"got density={density:g}, epsilon={epsilon:g}",
                "lower epsilon, or keep density at least epsilon away from 0 and 1",
            )
    return None


SPEC = make_method(
    "della",
    summary="Prune task vectors at random with magnitude-ranked odds, then TIES.",
    paper="https://arxiv.org/abs/2406.11617",
    normalize=True,
    rescale=True,
    elect_sign=True,
    thinner=sparsify.magprune,
    extra=[EPSILON],
    check=band_problem,
)

"""DELLA without sign election: MagPrune, rescale, add.

Deep et al., "DELLA-Merging", https://arxiv.org/abs/2406.11617
Defaults as mergekit 0.1.5: normalize = false, rescale = true, epsilon = 0.15.
"""

from mergepkg.methods import sparsify
from mergepkg.methods.della import EPSILON, band_problem
from mergepkg.methods.task_vectors import make_method

SPEC = make_method(
    "della_linear",
    summary="Prune task vectors at random with magnitude-ranked odds, then add.",
    paper="https://arxiv.org/abs/2406.11617",
    normalize=False,
    rescale=True,
    elect_sign=False,
    thinner=sparsify.magprune,
    extra=[EPSILON],
    check=band_problem,
)

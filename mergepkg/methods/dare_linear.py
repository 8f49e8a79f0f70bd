"""DARE (linear): drop task-vector entries at random, rescale, and add them up.

Yu et al., "Language Models are Super Mario", https://arxiv.org/abs/2311.03099
Invariant (tests): density 1 equals task_arithmetic. Randomness, and version 2, as in dare_ties.
Defaults as mergekit 0.1.5: normalize = false, rescale = true.
"""

from mergepkg.methods import sparsify
from mergepkg.methods.task_vectors import make_method

SPEC = make_method(
    "dare_linear",
    summary="Randomly drop and rescale task-vector entries, then add them.",
    paper="https://arxiv.org/abs/2311.03099",
    normalize=False,
    rescale=True,
    elect_sign=False,
    thinner=sparsify.bernoulli,
    version=2,
)

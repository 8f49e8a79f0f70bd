"""DARE-TIES: drop task-vector entries at random (keep probability = density), rescale,
then elect signs as TIES does.

Yu et al., "Language Models are Super Mario", https://arxiv.org/abs/2311.03099
Randomness is per tensor and input: the same recipe and seed give the same bytes in any
execution order (mergekit draws from one global generator). Density 1 keeps everything.
Defaults as mergekit 0.1.5: normalize = false, rescale = true (L1-norm rescale).
Version 2: each entry's draw is splitmix64 of (seed, entry index) (sparsify.draws), the
same on any device and thread count; version 1 drew from torch's generator, one thread
at a time, and its masks differed between CPU and GPU.
"""

from mergepkg.methods import sparsify
from mergepkg.methods.task_vectors import make_method

SPEC = make_method(
    "dare_ties",
    summary="Randomly drop and rescale task-vector entries, then TIES sign election.",
    paper="https://arxiv.org/abs/2311.03099",
    normalize=False,
    rescale=True,
    elect_sign=True,
    thinner=sparsify.bernoulli,
    version=2,
)

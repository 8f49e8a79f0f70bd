"""Task arithmetic: base + lambda * sum_i w_i (t_i - base).

Ilharco et al., "Editing Models with Task Arithmetic", https://arxiv.org/abs/2212.04089
Invariants (tests): one input with weight 1 returns that input; weight 0 returns the base.
Defaults as mergekit 0.1.5: normalize = false.
"""

from mergepkg.methods.task_vectors import make_method

SPEC = make_method(
    "task_arithmetic",
    summary="Add weighted task vectors (input - base) to the base.",
    paper="https://arxiv.org/abs/2212.04089",
    normalize=False,
    rescale=None,
    elect_sign=False,
)

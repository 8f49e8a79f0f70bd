"""TIES-Merging: trim each task vector to its top-density magnitudes, elect a sign per
entry from the weighted sum, and average only the deltas that agree with it.

Yadav et al., "TIES-Merging: Resolving Interference When Merging Models",
https://arxiv.org/abs/2306.01708
Invariants (tests): one input with density 1 equals task_arithmetic with normalize;
the result is exact top-k (k = max(1, int(density * n))), not approximately k.
Defaults as mergekit 0.1.5: normalize = true, rescale = false.
Version 2: among entries whose magnitude equals the k-th largest, the lowest indexes
are kept (version 1 kept whichever torch.topk returned; mergekit, whichever its sort
put first). Bfloat16 models repeat delta values, so such ties are common.
Version 3: a NaN magnitude counts as larger than every number (torch's sort order, so
mergekit's): with j NaN in a task vector, k - j numbers are kept, not k.
"""

from mergepkg.methods import sparsify
from mergepkg.methods.task_vectors import make_method

SPEC = make_method(
    "ties",
    summary="Trim task vectors by magnitude, elect signs, merge the agreeing deltas.",
    paper="https://arxiv.org/abs/2306.01708",
    normalize=True,
    rescale=False,
    elect_sign=True,
    thinner=sparsify.magnitude,
    version=3,  # 3: NaN among the k largest magnitudes, as torch sorts it (mergekit keeps them so)
)

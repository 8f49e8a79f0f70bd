"""Model Breadcrumbs: drop each task vector's largest (gamma) and smallest entries,
keeping a density fraction, then add them up.

Davari & Belilovsky, "Model Breadcrumbs", https://arxiv.org/abs/2312.06795
Invariant (tests): gamma small enough that int(gamma * n) == 0 keeps the top entries
rather than dropping everything (a fault of older mergekit, fixed here and in 0.1.5).
Defaults as mergekit 0.1.5: normalize = false, rescale = false, gamma = 0.01.
"""

from mergepkg.methods import sparsify
from mergepkg.methods.spec import Param
from mergepkg.methods.task_vectors import make_method

GAMMA = Param(
    "gamma",
    0.01,
    per_input=True,
    low=0.0,
    high=1.0,
    high_open=True,
    doc="fraction of largest-magnitude entries dropped as outliers",
)

SPEC = make_method(
    "breadcrumbs",
    summary="Drop outlier and small task-vector entries, then add them.",
    paper="https://arxiv.org/abs/2312.06795",
    normalize=False,
    rescale=False,
    elect_sign=False,
    thinner=sparsify.outliers,
    extra=[GAMMA],
)

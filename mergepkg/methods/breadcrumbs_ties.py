"""Model Breadcrumbs with TIES sign election.

Davari & Belilovsky, "Model Breadcrumbs", https://arxiv.org/abs/2312.06795
Defaults as mergekit 0.1.5: normalize = false, rescale = false, gamma = 0.01.
"""

from mergepkg.methods import sparsify
from mergepkg.methods.breadcrumbs import GAMMA
from mergepkg.methods.task_vectors import make_method

SPEC = make_method(
    "breadcrumbs_ties",
    summary="Drop outlier and small task-vector entries, then TIES sign election.",
    paper="https://arxiv.org/abs/2312.06795",
    normalize=False,
    rescale=False,
    elect_sign=True,
    thinner=sparsify.outliers,
    extra=[GAMMA],
)

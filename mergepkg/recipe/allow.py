"""The pitfall warnings' codes and `[package] allow`, the recipe's list of codes it
silences (docs/warnings.md).

The codes live here, beside the setting that names them, so that the parser can check
an `allow` entry against them; the checks themselves are `mergepkg/pitfalls/`. The
hundreds say what a check reads: 1xx the recipe alone, 2xx the models' configs and
headers (a step's layout), 3xx tensor values, while a step is built.
"""

from __future__ import annotations

from typing import Any

from mergepkg.errors import did_you_mean
from mergepkg.recipe.tables import TableReader

# code -> what it warns about, in a few words (`mergepkg validate` and docs/warnings.md say more)
CODES = {
    "MP101": "linear weights that do not sum to 1, without normalize",
    "MP102": "one input has over 90% of the weight",
    "MP103": "a density below 0.1",
    "MP104": "a slerp t outside [0, 1]",
    "MP105": "two moe experts with the same prompts",
    "MP201": "a random density that keeps almost nothing of a tensor",
    "MP202": "inputs of different architectures",
    "MP203": "a tokenizer with tokens past the output's embedding rows",
    "MP301": "an input that looks fine-tuned from another base",
    "MP302": "NaN or inf in an input tensor",
}


def allow_setting(r: TableReader, value: Any, key: str) -> tuple[str, ...]:
    """`allow = ["MP102", ...]`: known codes, each once, in the order written."""
    r.expect(value, list, key, 'a list of warning codes, e.g. ["MP102"]')
    codes: list[str] = []
    for i, code in enumerate(value):
        ckey = f"{key}[{i}]"
        r.expect(code, str, ckey, 'a warning code like "MP102"')
        if code not in CODES:
            spelled = code.strip().upper()
            hint = f"did you mean {spelled!r}?" if spelled in CODES else did_you_mean(code, CODES)
            raise r.error(ckey, f"unknown warning code {code!r}", hint)
        if code not in codes:
            codes.append(code)
    return tuple(codes)

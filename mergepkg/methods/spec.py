"""What a merge method declares about itself: parameters, ranges, input contract.

A method is a pure function over tensors plus a `MethodSpec`. The spec is all that
parsing, validation, keys and `mergepkg methods` need, so none of them touch torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

REQUIRED = object()  # marks a parameter without default

FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32


@dataclass(frozen=True)
class Param:
    name: str
    default: Any = REQUIRED
    per_input: bool = False  # one value per (non-base) input, else one per step
    kind: type = float  # float, int, bool or str (a str parameter lists its `choices`)
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # (low, ...] rather than [low, ...]
    high_open: bool = False
    doc: str = ""
    choices: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    @property
    def arg(self) -> str:
        """The Python keyword the merge function takes (`lambda` is reserved)."""
        return "lambda_" if self.name == "lambda" else self.name

    @property
    def range_text(self) -> str:
        if self.kind is bool:
            return "true or false"
        if self.kind is str:
            return " | ".join(self.choices)
        if self.low is None and self.high is None:
            return "any number"
        lo = "-inf" if self.low is None else f"{self.low:g}"
        hi = "inf" if self.high is None else f"{self.high:g}"
        left = "(" if self.low_open or self.low is None else "["
        right = ")" if self.high_open or self.high is None else "]"
        return f"{left}{lo}, {hi}{right}"

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed for this parameter, or None when it is."""
        if self.kind is bool:
            return None if isinstance(value, bool) else f"expected true or false, got {value!r}"
        if self.kind is str:
            return (
                None
                if value in self.choices
                else f"expected one of {', '.join(map(repr, self.choices))}, got {value!r}"
            )
        if self.kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            return f"expected an integer, got {value!r}"
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return f"expected a number, got {value!r}"
        if abs(value) > FLOAT32_MAX:  # it multiplies float32 tensors: it would overflow mid-build
            return f"expected a number float32 can hold (at most {FLOAT32_MAX:.6g} in size), got {value!r}"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        if too_low or too_high:
            return f"expected a number in {self.range_text}, got {value!r}"
        return None


@dataclass(frozen=True)
class Problem:
    """Why a method cannot merge a tensor with these parameters, and what to do."""

    message: str
    hint: str | None = None


@dataclass(frozen=True)
class MethodSpec:
    name: str
    merge: Callable[..., Any]
    params: tuple[Param, ...]
    summary: str
    paper: str | None = None
    version: int = 1  # bumped when the method's numerics change
    base: str = "required"  # "required", "optional" or "none"
    min_inputs: int = 1  # non-base inputs, per slice
    # a slice whose only source is the base gives the base's layers (mergekit's task-vector
    # family returns the base when it has no task vector)
    base_alone: bool = False
    max_inputs: int | None = None
    random: bool = False  # takes `rng`: one seeded generator per input
    fp32: bool = False  # computes in at least float32 whatever the step's dtype (as mergekit does)
    copies: bool = False  # copies stored bytes: the step's `dtype` is not its tensors' (moe: the gates')
    # stream(base, tensors, *, compute, out_dtype, out=None, **params): the same result
    # as merge(converted inputs).to(out_dtype), from inputs in their stored dtype, in
    # cache-sized chunks (kernels/chunks.py), written into `out` when given (a reused buffer of
    # the result's shape and dtype). None: the engine converts and calls merge.
    stream: Callable[..., Any] | None = None
    rows: bool = False  # elementwise: a block of rows of the inputs gives those rows of the result
    light: bool = False  # `stream` shares its chunks out to threads of its own (chunks.parallel): torch gets one
    fused: bool = False  # on the CPU, `stream` may run on kernels/fused.py's loops, shared out likewise
    thinner: str | None = None  # the keep rule of those loops: "magnitude" (top-k), "bernoulli" (DARE), None (all kept)
    kernels: tuple[str, ...] = ()  # on the CPU, `stream` may run on these compiled loops, not fused.py's (slerp)
    # check(params) -> why one output tensor's resolved parameters (as `merge` takes them)
    # cannot be merged, or None: run by the layout, so `validate` finds it before a build
    check: Callable[[Mapping[str, Any]], Problem | None] | None = None

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    def count_problem(self, count: int, base: str = "the base", *, in_slice: bool = False) -> str | None:
        """Why `count` models besides the base (called `base`) do not suit this method, or None;
        `in_slice`: they are a slice's sources."""
        if in_slice and count == 0 and self.base_alone:
            return None
        if self.min_inputs <= count and (self.max_inputs is None or count <= self.max_inputs):
            return None
        noun = "model" if (self.max_inputs or self.min_inputs) == 1 else "models"  # "at least 1 model"
        extra = f" besides {base}" if self.base != "none" else ""
        return f"method {self.name!r} takes {self.inputs_text} {noun}{extra}, got {count}"

    @property
    def inputs_text(self) -> str:
        if self.max_inputs == self.min_inputs:
            return f"exactly {self.min_inputs}"
        if self.max_inputs is None:
            return f"at least {self.min_inputs}"
        return f"{self.min_inputs} to {self.max_inputs}"


# Parameters shared by the task-vector family (task_arithmetic, ties, dare, ...).
def weight_param(**kw) -> Param:
    return Param("weight", per_input=True, doc="scale of this input's task vector", **kw)


def density_param() -> Param:
    return Param(
        "density",
        1.0,
        per_input=True,
        low=0.0,
        high=1.0,
        low_open=True,
        doc="fraction of the task vector's entries kept",
    )


def flag(name: str, default: bool, doc: str) -> Param:
    return Param(name, default, kind=bool, doc=doc)

"""Build one step: stream input tensors through the method into sharded safetensors.

Three stages run at once so the cores stay busy and I/O hides behind math: a reader
thread reads the next tensor's inputs (mapped, and checked: `values.py`), the calling thread
merges, and a writer thread streams results to disk (hashing beside the writes).
Queues of one or two bound memory to a few tensors, never a model.
"""

from __future__ import annotations

import functools
import math
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mergepkg._lazy import lazy_import, torch
from mergepkg.engine.device import default_threads
from mergepkg.engine.memory import Budget, for_process, trim
from mergepkg.engine.progress import NullReporter, Reporter
from mergepkg.engine.routers import routers
from mergepkg.engine.rows import align_rows
from mergepkg.engine.seeds import tensor_seed
from mergepkg.engine.side_files import write_side_files
from mergepkg.engine.values import ValueWatch
from mergepkg.errors import MergeError, MergepkgError
from mergepkg.io.buffers import BufferPool
from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import NAME_OF, TORCH_NAME, TensorInfo, torch_dtype
from mergepkg.io.writer import MAX_SHARD_BYTES, ShardWriter
from mergepkg.layout.types import FLOAT_CODES, OutputTensor, StepLayout
from mergepkg.methods.kernels import chunks
from mergepkg.recipe.tables import AUTO
from mergepkg.store.hashcache import check_files

fused = lazy_import("mergepkg.methods.fused")  # numpy and numba: imported when a step is built

# One merged tensor (or block of rows of one) on its way to the writer:
# (tensor, pooled: its buffer goes back to the pool once written, input bytes it stands for, first block, last block)
Piece = tuple[Any, bool, int, bool, bool]


def step_dtype(layout: StepLayout, loaded: Sequence[torch.Tensor] = ()) -> torch.dtype:
    """The dtype a step merges in (mergekit's `dtype`): the recipe's, or for "auto" the
    inputs' own dtypes promoted (float32 where nothing is loaded yet)."""
    if layout.step.dtype != AUTO:
        return torch_dtype(layout.step.dtype)
    return functools.reduce(torch.promote_types, [x.dtype for x in loaded]) if loaded else torch.float32


def compute_dtype(layout: StepLayout, loaded: Sequence[torch.Tensor] = ()) -> torch.dtype:
    """The dtype the method's arithmetic runs in: the step's, or float32 for a method whose
    numerics need at least that (as mergekit's do: `MethodSpec.fp32`)."""
    compute = step_dtype(layout, loaded)
    if layout.method.fp32 and compute in (torch.float16, torch.bfloat16):
        compute = torch.float32
    return compute


def rounds(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether converting `src` to `dst` may change a value (not a widening)."""
    wider = {torch.float16: 1, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}
    return src != dst and not wider.get(dst, 0) > wider.get(src, 0)


def result_dtype(compute: torch.dtype, dtype: torch.dtype, saved: torch.dtype) -> torch.dtype:
    """The dtype a method writes its result in: the saved dtype, unless the result was
    computed wider than the step's dtype, which it is then rounded to first."""
    return dtype if rounds(compute, dtype) and saved != dtype else saved


def merge_tensor(
    layout: StepLayout, out: OutputTensor, loaded: list, *, device: str, seed: int, into: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the step's method on one output tensor's inputs (base first, if any); a
    streaming method writes the result `into` a given buffer.

    Values are rounded where mergekit rounds them: each input to the step's dtype, then
    the method (which may compute wider), its result to the step's dtype, then to the
    saved dtype. A rounding that cannot change a value (a widening) is skipped. A tensor
    that is not floating point is copied, not merged (`same_bytes`)."""
    if out.info.dtype not in FLOAT_CODES:  # integers and bools are copied, not merged (layout/dense.py)
        return same_bytes(out, loaded)
    method = layout.method
    dtype = step_dtype(layout, loaded)
    compute = compute_dtype(layout, loaded)
    saved = torch_dtype(out.info.dtype)
    if method.copies:  # stored bytes, whatever the step's dtype is for
        dtype = compute = saved
    via = result_dtype(compute, dtype, saved)
    # a streaming method computing in the step's dtype rounds each chunk to it as it reads it
    whole = not (method.stream and compute == dtype)
    loaded = [
        x.to(device=device, dtype=dtype) if whole and rounds(x.dtype, dtype) else x.to(device=device) for x in loaded
    ]
    if not method.stream:  # a streaming method converts chunk by chunk itself
        loaded = [x.to(dtype=compute) for x in loaded]  # no-op when already there
    base = loaded[0] if out.base else None
    tensors = loaded[1:] if out.base else loaded
    if base is not None and not tensors:  # a slice of the base alone (MethodSpec.base_alone): the base
        return base.to(dtype=dtype).to(dtype=via).to(dtype=saved)
    kwargs = dict(out.params)
    if method.random:

        def rng(i: int, _name: str = out.name) -> torch.Generator:
            # a CPU generator on every device: a CUDA one gives other numbers from the same seed
            return torch.Generator().manual_seed(tensor_seed(seed, _name, i))

        kwargs["rng"] = rng
    try:
        if method.stream:
            result = method.stream(
                base, tensors, compute=compute, out_dtype=via, out=into if via == saved else None, **kwargs
            )
        else:
            result = method.merge(base, tensors, **kwargs)
    except MergepkgError as e:
        e.at(tensor=out.name)  # which tensor; the build adds which step
        raise
    except (ValueError, RuntimeError, IndexError, ZeroDivisionError) as e:  # a tensor the method cannot take
        raise MergeError(f"{method.name} failed: {e}", tensor=out.name) from e
    return result.to(dtype=via).to(dtype=saved)


def same_bytes(out: OutputTensor, loaded: Sequence[torch.Tensor]) -> torch.Tensor:
    """A tensor that is not floating point (a buffer: position ids, a mask), copied from
    the base or first input (`loaded[0]`) when every model holds the same bytes; a sum of
    integers or bools would mean nothing, and which one to take would be a guess.
    A copy: the input's buffer goes back to the pool while the writer holds the result."""
    first = loaded[0]
    for part, t in zip(out.parts[1:], loaded[1:]):
        if not torch.equal(t, first):
            raise MergeError(
                f"{out.parts[0].model!r} and {part.model!r} hold different values in this "
                f"{TORCH_NAME[out.info.dtype]} tensor: integer and bool tensors are copied, not merged, "
                "so the models must agree on them",
                hint="such a tensor (position ids, a mask) is the same in fine-tunes of one base; models that "
                "differ there are quantized or of another architecture: merge models of one base",
                tensor=out.name,
            )
    return first.clone()


def budget_for(
    layouts: Iterable[StepLayout], infos: dict[str, dict[str, TensorInfo]], max_memory: int | None, device: str = "cpu"
) -> Budget:
    """The memory budget of a build of `layouts` (reading tensors `infos`) under
    `max_memory`, measured once before the first step with what those steps load already
    resident (torch; numba's kernels where a step runs on them). A limit too small, for
    the process or a tensor merged whole (`Budget.check_fits`), is an error before anything
    is built."""
    if max_memory is None:
        return Budget(None)
    layouts = list(layouts)
    for layout in layouts:
        if _runs_fused(layout, device):  # numba (about 120 MB) and the step's kernels
            compute = fused.DTYPES if layout.step.dtype == AUTO else [fused.dtype_name(compute_dtype(layout))]
            fused.load(compute, kernels=_method_kernels(layout), counts=[_inputs(layout)])
    budget = for_process(max_memory)
    budget.check_fits(layouts, infos, max_memory)
    return budget


def _runs_fused(layout: StepLayout, device: str) -> bool:
    """Whether the step's streams run on compiled loops: the task-vector family's
    (fused.py) or a method's own (slerp's: fused_slerp.py)."""
    method = layout.method
    return (method.fused or bool(method.kernels)) and fused.covers(compute_dtype(layout), _inputs(layout), device)


def _inputs(layout: StepLayout) -> int:
    """How many models a step merges besides its base."""
    return len(layout.step.models) - (layout.step.base is not None)


def _method_kernels(layout: StepLayout) -> tuple[str, ...]:
    """The compiled loops a step's tensors run: its method's own, or the task-vector family's
    by its method's thinner, with the L1 pass where some tensor is rescaled (`fused.kernels`)."""
    if layout.method.kernels:
        return layout.method.kernels
    return fused.kernels(layout.method.thinner, any(t.params.get("rescale") for t in layout.tensors))


def _kernels(layout: StepLayout, infos: Mapping[str, Mapping[str, TensorInfo]]) -> dict[str, list]:
    """What a fused step runs (`fused.load`'s arguments): its method's kernels, for the
    step's compute dtype (for "auto", any of its inputs' dtypes, or float32) over its
    inputs' stored dtypes, writing results in the dtypes `merge_tensor` asks for, for its
    count of inputs."""
    # integer and bool tensors are copied (`same_bytes`), never through a kernel
    stored = sorted({NAME_OF[t.dtype] for tensors in infos.values() for t in tensors.values() if t.dtype in NAME_OF})
    saved = {torch_dtype(t.info.dtype) for t in layout.tensors if t.info.dtype in NAME_OF}
    if layout.step.dtype != AUTO:
        compute, dtype = compute_dtype(layout), step_dtype(layout)
        results = {result_dtype(compute, dtype, s) for s in saved}
        computes = [fused.dtype_name(compute)]
    else:  # the inputs' own dtypes, promoted; a fused method computes in them
        results = saved
        computes = sorted({*stored, "float32"} & set(fused.DTYPES))
    return {
        "compute": computes,
        "stored": stored,
        "kernels": list(_method_kernels(layout)),
        "results": sorted(fused.dtype_name(d) for d in results),
        "counts": [_inputs(layout)],
    }


def build_step(
    layout: StepLayout,
    folders: dict[str, Path],
    infos: dict[str, dict[str, TensorInfo]],
    out_dir: Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    max_shard_bytes: int = MAX_SHARD_BYTES,
    budget: Budget | None = None,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> dict[str, str]:
    """Write the model of `layout` into `out_dir` (an empty folder the caller owns);
    returns each output tensor's digest (`io.digest.combine_digests` makes the output's).
    `budget`: memory to stay under (`budget_for`); None, no limit."""
    reporter = reporter or NullReporter()
    writer = ShardWriter(out_dir, [(t.name, t.info) for t in layout.tensors], max_shard_bytes)
    write_tensors(
        layout, folders, infos, writer, seed=seed, device=device, budget=budget, threads=threads, reporter=reporter
    )
    write_side_files(layout, folders, out_dir)
    check_files(folders[m] for m in layout.step.models)  # the side files too: read after the tensors
    reporter.step_finished(layout.step.name)
    return writer.digests


def write_tensors(
    layout: StepLayout,
    folders: dict[str, Path],
    infos: dict[str, dict[str, TensorInfo]],
    writer: ShardWriter,
    *,
    seed: int,
    device: str,
    budget: Budget | None,
    threads: int | None,
    reporter: Reporter,
) -> None:
    """Merge every tensor of `layout`, in order, into `writer` and close it (on a failure,
    abort it). `layout` may hold only some of a step's tensors (one part of it,
    `engine/split.py`): each tensor's bytes depend on nothing else."""
    merger = None
    try:
        merger = _Merger(
            layout, folders, infos, seed=seed, device=device, budget=budget or Budget(None), threads=threads
        )
        reporter.step_started(layout.step.name, len(layout.tensors), layout.bytes_in)
        _stream(merger, writer, reporter)
        if merger.kernels is not None and (note := fused.uncached_warning()):
            reporter.warning(note)
        for pitfall in merger.watch.pitfalls():  # MP3xx: a reporter that raises here leaves nothing behind
            reporter.pitfall(pitfall)
        # every input file still as pinned, and a sha256 taken before reading (a first build's,
        # store/hashcache.py) confirmed by its read, waited for: else nothing is written
        check_files(folders[m] for m in layout.step.models)
    except BaseException:
        writer.abort()
        raise
    finally:
        if merger is not None:
            merger.close()
            if merger.budget.limit:
                trim()
    writer.close()


def _stream(merger: _Merger, writer: ShardWriter, reporter: Reporter) -> None:
    """Merge every output tensor in order: the next one's inputs read ahead on a reader
    thread while this one merges, results written on a writer thread."""
    results: queue.Queue = queue.Queue(maxsize=merger.budget.results_waiting)
    failure: list[BaseException] = []

    def write_loop() -> None:
        while (item := results.get()) is not None:
            if failure:
                continue  # drain so the producer never blocks
            name, (tensor, pooled, nbytes, first, last) = item
            try:
                done = merger.give_back_later(tensor) if pooled else None
                writer.write(name, tensor, first=first, last=last, done=done)
                reporter.tensor_done(nbytes)
            except BaseException as e:  # surfaced on the calling thread
                failure.append(e)

    write_thread = threading.Thread(target=write_loop, name="mergepkg-writer", daemon=True)
    write_thread.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergepkg-reader") as pool:
            tensors = merger.layout.tensors
            pending: Future | None = pool.submit(merger.load, tensors[0]) if tensors else None
            merger.load_kernels()
            for i, out in enumerate(tensors):
                loaded = pending.result() if pending else merger.load(out)
                ahead = i + 1 < len(tensors) and merger.may_read_ahead(out, tensors[i + 1])
                pending = pool.submit(merger.load, tensors[i + 1]) if ahead else None
                pieces = merger.pieces(out, loaded)
                del loaded  # merged already (a whole tensor): its inputs go while the writer waits
                for piece in pieces:
                    if failure:
                        break
                    results.put((out.name, piece))
                if failure:
                    break
    finally:
        results.put(None)
        write_thread.join()
    if failure:
        raise failure[0]


class _Merger:
    """One step's inputs, memory and threads: reads an output tensor's inputs and merges
    them, whole or (under a memory limit) a block of rows at a time."""

    def __init__(
        self,
        layout: StepLayout,
        folders: dict[str, Path],
        infos: dict[str, dict[str, TensorInfo]],
        *,
        seed: int,
        device: str,
        budget: Budget,
        threads: int | None,
    ):
        self.layout, self.infos, self.seed, self.device = layout, infos, seed, device
        method = layout.method
        # light methods and fused kernels share chunks out to threads of their own
        # (chunks.parallel); torch's threads inside them would oversubscribe the cores
        # (measured: DARE-TIES spent 8.5 s in the kernel, 2.4 s with torch on one thread).
        workers = threads or default_threads()
        own = _runs_fused(layout, device)
        torch.set_num_threads(1 if own or method.light else workers)
        # numba and the kernels (120 MB, 0.5-0.65 s) loaded by `load_kernels`, beside the
        # first read; `budget_for` loaded them first under a limit
        self.kernels = _kernels(layout, infos) if own else None
        self.budget = budget
        # under a limit, one thread: each one's scratch and allocator arena cost memory
        # (measured: linear under 600MB peaked at 0.94 GB on two threads, 0.54 GB on one)
        chunks.set_threads(1 if self.budget.limit else workers)
        # a streaming method's result never shares memory with its inputs: their buffers
        # can be reused as soon as it returns
        self.buffers = BufferPool(self.budget.limit // 8 if self.budget.limit else None) if method.stream else None
        # tensors no input gives (an moe step's routers): computed once, before any file is
        # opened; only those of `layout`'s own tensors (a part of a step computes its own)
        own_routers = layout.step.moe is not None and any(not t.parts for t in layout.tensors)
        self.computed = routers(layout, folders, device=device, seed=seed) if own_routers else {}
        self.readers = {m: ModelReader(folders[m], infos[m], self.buffers) for m in layout.step.models}
        self.watch = ValueWatch(layout, infos)  # NaN, inf and task-vector norms of what is read (MP3xx)

    def load_kernels(self) -> None:
        """Load the fused kernels this step runs, if any: called once the first tensor's
        inputs are being read, which goes on beside it (the first touch of their mapped pages
        is in torch's finiteness sum, which gives the GIL back)."""
        if self.kernels is not None:
            fused.load(**self.kernels)

    def close(self) -> None:
        for r in self.readers.values():
            r.close()

    def may_read_ahead(self, current: OutputTensor, following: OutputTensor) -> bool:
        return self.budget.read_ahead(self.layout, self.infos, current, following)

    def give_back_later(self, tensor: torch.Tensor):
        """What the writer calls once a pooled result is written and hashed."""
        assert self.buffers is not None
        return lambda: self.buffers.give_back([tensor])

    def load(self, out: OutputTensor) -> list | None:
        """The inputs of `out` (base first), or None when it is merged block by block."""
        if not out.parts:
            return [self.computed[out.name]]  # routers: no input gives them
        if out.row_map is None and self.budget.row_block(self.layout, self.infos, out):
            return None  # rows to align are read whole: a row may come from anywhere (Budget.row_block)
        loaded = [self.readers[p.model].get(p.tensor) for p in out.parts]
        self.watch.loaded(out, loaded)
        if out.row_map is not None:  # vocabulary rows moved onto the output's vocabulary,
            # each input let go as soon as its rows are moved (what Budget.loading counts)
            pool = self.buffers
            loaded = align_rows(out.row_map, loaded, done=(lambda t: pool.give_back([t])) if pool else None)
        self.watch.aligned(out, loaded)
        return loaded

    def pieces(self, out: OutputTensor, loaded: list | None) -> Iterable[Piece]:
        """`out` merged: one piece, or blocks of rows (read and merged as they are
        consumed) when `load` left it to be read so."""
        if loaded is not None:
            return [(*self.merge(out, loaded), self.budget.inputs(self.infos, out), True, True)]
        return self._blocks(out)

    def _blocks(self, out: OutputTensor) -> Iterator[Piece]:
        rows, block = out.info.shape[0], self.budget.row_block(self.layout, self.infos, out)
        assert block is not None
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            part = [self.readers[p.model].get_rows(p.tensor, start, stop) for p in out.parts]
            self.watch.loaded(out, part)
            self.watch.aligned(out, part)
            share = self.budget.inputs(self.infos, out) * (stop - start) // rows
            yield (*self.merge(out, part, stop - start), share, start == 0, stop == rows)

    def merge(self, out: OutputTensor, loaded: list, rows: int | None = None) -> tuple[torch.Tensor, bool]:
        """(the merged tensor, whether its buffer is pooled and goes back once written)."""
        buffers, into = self.buffers, None
        # results, like inputs, in reused memory (not under a limit: a pooled result stays resident)
        if buffers is not None and torch.device(self.device).type == "cpu" and not self.budget.limit:
            shape = out.info.shape if rows is None else (rows, *out.info.shape[1:])
            dtype = torch_dtype(out.info.dtype)
            into = buffers.tensor(dtype, shape, math.prod(shape) * dtype.itemsize)
        tensor = merge_tensor(self.layout, out, loaded, device=self.device, seed=self.seed, into=into)
        if buffers is not None:
            buffers.give_back(loaded)
            if into is not None and tensor.data_ptr() != into.data_ptr():  # the method made its own result
                buffers.give_back([into])
                into = None
        return tensor, into is not None

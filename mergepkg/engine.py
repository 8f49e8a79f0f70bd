"""Build one step: stream input tensors through the method into sharded safetensors.

Three stages run at once so both cores stay busy and I/O hides behind math: a reader
thread loads the next tensor's inputs (safetensors mmap), the calling thread merges,
and a writer thread streams results to disk. Queues of two bound memory to a few
tensors, never a model.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import queue
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from mergepkg._lazy import lazy_import, torch
from mergepkg.align import align_rows, move_token_ids
from mergepkg.buffers import BufferPool
from mergepkg.errors import BuildError, MergeError, MergepkgError
from mergepkg.layout import OutputTensor, StepLayout
from mergepkg.memory import for_process
from mergepkg.methods import chunks
from mergepkg.sources import SIDE_FILES
from mergepkg.tensors import ModelReader, ShardWriter, TensorInfo, torch_dtype
from mergepkg.vocab import Vocab

fused = lazy_import("mergepkg.methods.fused")  # numpy: imported when a step is built

TOKENIZER_FILES = [f for f in SIDE_FILES if f not in ("config.json", "generation_config.json")]


class Reporter(Protocol):
    """How the engine tells the outside world about progress (the CLI draws bars)."""

    def step_reused(self, name: str, key: str) -> None: ...
    def step_started(self, name: str, tensors: int, nbytes: int) -> None: ...
    def tensor_done(self, nbytes: int) -> None: ...
    def step_finished(self, name: str) -> None: ...


class NullReporter:
    def step_reused(self, name, key): pass
    def step_started(self, name, tensors, nbytes): pass
    def tensor_done(self, nbytes): pass
    def step_finished(self, name): pass


@functools.cache
def default_threads() -> int:
    """torch's own choice of intra-op threads, read before mergepkg changes it."""
    return torch.get_num_threads()


def tensor_seed(seed: int, tensor: str, index: int) -> int:
    """Seed of input `index` of output tensor `tensor`: independent of execution order."""
    digest = hashlib.sha256(f"{seed}\0{tensor}\0{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def compute_dtype(layout: StepLayout):
    compute = torch_dtype(layout.step.dtype)
    if layout.method.fp32 and compute in (torch.float16, torch.bfloat16):
        compute = torch.float32  # the method's numerics need it; the saved dtype is unchanged
    return compute


def merge_tensor(layout: StepLayout, out: OutputTensor, loaded: list, *, device: str, seed: int,
                 into: torch.Tensor | None = None) -> torch.Tensor:
    """Run the step's method on one output tensor's inputs (base first, if any); a
    streaming method writes the result `into` a given buffer."""
    method = layout.method
    compute = compute_dtype(layout)
    out_dtype = torch_dtype(out.info.dtype)
    if method.stream:  # converts chunk by chunk itself: move the stored bytes only
        loaded = [x.to(device=device) for x in loaded]
    else:
        loaded = [x.to(device=device, dtype=compute) for x in loaded]  # no-op when already there
    base = loaded[0] if out.base else None
    tensors = loaded[1:] if out.base else loaded
    kwargs = dict(out.params)
    if method.random:
        def rng(i: int, _name=out.name):
            return torch.Generator(device=device).manual_seed(tensor_seed(seed, _name, i))
        kwargs["rng"] = rng
    try:
        if method.stream:
            result = method.stream(base, tensors, compute=compute, out_dtype=out_dtype, out=into, **kwargs)
        else:
            result = method.merge(base, tensors, **kwargs)
    except MergepkgError as e:
        e.message = f"{out.name}: {e.message}"
        raise
    except (ValueError, RuntimeError) as e:
        raise MergeError(f"{method.name} failed on {out.name}: {e}") from e
    return result.to(dtype=out_dtype)


def build_step(
    layout: StepLayout,
    folders: dict[str, Path],
    infos: dict[str, dict[str, TensorInfo]],
    out_dir: Path,
    *,
    seed: int = 0,
    device: str = "cpu",
    max_shard_bytes: int = 2 * 1024**3,
    max_memory: int | None = None,
    threads: int | None = None,
    reporter: Reporter | None = None,
) -> str:
    """Write the model of `layout` into `out_dir` (an empty folder the caller owns);
    returns the output digest."""
    reporter = reporter or NullReporter()
    step = layout.step
    # light methods and fused kernels share chunks out to threads of their own
    # (chunks.parallel); torch's threads inside them would oversubscribe the cores
    # (measured: DARE-TIES spent 8.5 s in the kernel, 2.4 s with torch on one thread).
    workers = threads or default_threads()
    own = layout.method.fused and fused.covers(compute_dtype(layout), len(step.models) - 1, device)
    torch.set_num_threads(1 if own or layout.method.light else workers)
    if own:
        fused.load()  # numba and the kernels (120 MB): resident before the budget is measured
    budget = for_process(max_memory)
    # under a limit, one thread: each one's scratch and allocator arena cost memory
    # (measured: linear under 600MB peaked at 0.94 GB on two threads, 0.54 GB on one)
    chunks.set_threads(1 if budget.limit else workers)
    # a streaming method's result never shares memory with its inputs: their buffers
    # can be reused as soon as it returns
    buffers = BufferPool(budget.limit // 8 if budget.limit else None) if layout.method.stream else None
    # tensors no input gives (MoE routers): computed once, before any file is opened
    computed = layout.method.computed(layout, folders, device=device, seed=seed) if layout.method.computed else {}
    readers = {m: ModelReader(folders[m], infos[m], buffers) for m in step.models}
    writer = ShardWriter(out_dir, [(t.name, t.info) for t in layout.tensors], max_shard_bytes)
    reporter.step_started(step.name, len(layout.tensors), layout.bytes_in)

    def load(out: OutputTensor) -> list | None:
        if not out.parts:
            return [computed[out.name]]  # MoE routers: no input gives them
        if out.row_map is None and budget.row_block(layout, infos, out):
            return None  # read block by block below (rows to align are read whole: a row may come from anywhere)
        loaded = [readers[p.model].get(p.tensor) for p in out.parts]
        if out.row_map is not None:  # vocabulary rows moved onto the output's vocabulary (align.py)
            loaded, read = align_rows(out.row_map, loaded), loaded
            if buffers is not None:
                buffers.give_back(read)
        return loaded

    def merge_loaded(out: OutputTensor, loaded: list, rows: int | None = None):
        into = None
        # results, like inputs, in reused memory (not under a limit: a pooled result stays resident)
        if buffers is not None and torch.device(device).type == "cpu" and not budget.limit:
            shape = out.info.shape if rows is None else (rows, *out.info.shape[1:])
            dtype = torch_dtype(out.info.dtype)
            into = buffers.tensor(dtype, shape, math.prod(shape) * dtype.itemsize)
        tensor = merge_tensor(layout, out, loaded, device=device, seed=seed, into=into)
        if buffers is not None:
            buffers.give_back(loaded)
        if into is not None and tensor.data_ptr() != into.data_ptr():  # the method made its own result
            buffers.give_back([into])
            into = None
        return tensor, into is not None  # pooled: given back once written and hashed

    def merge_in_rows(out: OutputTensor):
        """Merge `out` a block of rows at a time (elementwise methods, under a memory limit)."""
        rows, block = out.info.shape[0], budget.row_block(layout, infos, out)
        for start in range(0, rows, block):
            stop = min(rows, start + block)
            loaded = [readers[p.model].get_rows(p.tensor, start, stop) for p in out.parts]
            share = budget.inputs(infos, out) * (stop - start) // rows
            yield *merge_loaded(out, loaded, stop - start), share, start == 0, stop == rows

    results: queue.Queue = queue.Queue(maxsize=budget.results_waiting)
    failure: list[BaseException] = []

    def write_loop():
        while (item := results.get()) is not None:
            if failure:
                continue  # drain so the producer never blocks
            name, tensor, pooled, nbytes, first, last = item
            try:
                done = (lambda t=tensor: buffers.give_back([t])) if pooled else None
                writer.write(name, tensor, first=first, last=last, done=done)
                reporter.tensor_done(nbytes)
            except BaseException as e:  # surfaced on the calling thread
                failure.append(e)

    write_thread = threading.Thread(target=write_loop, name="mergepkg-writer", daemon=True)
    write_thread.start()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mergepkg-reader") as pool:
            tensors = layout.tensors
            pending = pool.submit(load, tensors[0]) if tensors else None
            for i, out in enumerate(tensors):
                loaded = pending.result() if pending else load(out)
                ahead = i + 1 < len(tensors) and budget.read_ahead(layout, infos, out, tensors[i + 1])
                pending = pool.submit(load, tensors[i + 1]) if ahead else None
                if loaded is not None:
                    pieces = [(*merge_loaded(out, loaded), budget.inputs(infos, out), True, True)]
                    del loaded
                else:
                    pieces = merge_in_rows(out)
                for tensor, pooled, nbytes, first, last in pieces:
                    if failure:
                        break
                    results.put((out.name, tensor, pooled, nbytes, first, last))
                if failure:
                    break
    finally:
        results.put(None)
        write_thread.join()
        for r in readers.values():
            r.close()
        if failure or sys.exc_info()[0] is not None:
            writer.abort()
    if failure:
        raise failure[0]
    writer.close()
    write_side_files(layout, folders, out_dir)
    reporter.step_finished(step.name)
    return writer.digest


def write_side_files(layout: StepLayout, folders: dict[str, Path], out_dir: Path) -> None:
    """config.json from the layout; generation config and tokenizer copied from their sources
    (special token ids moved with a moved vocabulary; a union's tokenizer written)."""
    (out_dir / "config.json").write_text(json.dumps(layout.config, indent=2, sort_keys=True) + "\n")
    gen = folders[layout.config_from] / "generation_config.json"
    if gen.is_file() and layout.token_ids:  # the vocabulary moved: so do its special token ids
        moved = move_token_ids(json.loads(gen.read_text()), layout.token_ids)
        (out_dir / "generation_config.json").write_text(json.dumps(moved, indent=2, sort_keys=True) + "\n")
    elif gen.is_file():
        shutil.copyfile(gen, out_dir / "generation_config.json")
    if isinstance(layout.vocab, Vocab) and layout.vocab.made:  # a union: this step's own tokenizer
        for name, text in layout.vocab.files.items():
            (out_dir / name).write_text(text, encoding="utf-8")
        return
    for name in TOKENIZER_FILES:
        src = folders[layout.tokenizer_from] / name
        if src.is_file():
            shutil.copyfile(src, out_dir / name)


def check_device(device: str) -> None:
    """Fail early, with a message, for a device this machine does not have."""
    kind, _, index = device.partition(":")
    if kind == "cpu" and not index:
        return
    if kind == "cuda" and (not index or index.isdigit()):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise BuildError(f"--device {device}: no CUDA device is available", hint="use --device cpu")
        if index and int(index) >= count:
            raise BuildError(f"--device {device}: this machine has {count} CUDA device(s)",
                             hint=f"use cuda:0 .. cuda:{count - 1}")
        return
    if kind == "mps" and not index:
        if not torch.backends.mps.is_available():
            raise BuildError("--device mps: MPS is not available on this machine", hint="use --device cpu")
        return
    raise BuildError(f"unknown device {device!r}", hint="use cpu, cuda, cuda:N or mps")

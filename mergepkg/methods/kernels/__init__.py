"""The numerics beneath the methods: sums that do not depend on threads or chunking
(`reduce.py`), a method's arithmetic streamed in cache-sized chunks (`chunks.py`), and
numba loops: the task-vector family's (`compiled.py`, used by `methods/fused.py`) and
slerp's (`spherical.py`), over the dtypes (`dtypes.py`), DARE's draws (`draws.py`) and
torch's sum (`torch_sum.py`) they share, compiled and cached by `jit.py`."""

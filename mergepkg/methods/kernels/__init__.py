"""The numerics beneath the methods: sums that do not depend on threads or chunking
(`reduce.py`), a method's arithmetic streamed in cache-sized chunks (`chunks.py`), and
numba loops for the task-vector family (`compiled.py`, used by `methods/fused.py`)."""

"""Model files: safetensors headers and tensors read one at a time, sharded safetensors
written as tensors arrive, digests over tensors, reused buffers, direct writes."""

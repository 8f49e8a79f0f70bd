"""Layouts: what each step writes (every output tensor's name, dtype, shape, input
tensors and parameters), from configs, headers and tokenizers only; vocabularies aligned."""

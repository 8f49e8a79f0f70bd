"""Exports: built steps converted to other file formats (GGUF, by llama.cpp's converter)."""

"""io/tensors.py: every safetensors dtype code is a torch dtype and back, so a model
holding integer, bool or float8 tensors is scanned and read (the layout then decides what
is merged: layout/dense.py `not_merged`)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mergepkg.io.reader import ModelReader
from mergepkg.io.tensors import ITEMSIZE, code_of, scan_tensors, torch_dtype


@pytest.mark.parametrize("code", sorted(ITEMSIZE))
def test_every_safetensors_dtype_code_is_a_torch_dtype_and_back(code):
    dtype = torch_dtype(code)  # before, only the four float codes: `module 'torch' has no attribute 'I64'`
    assert dtype.itemsize == ITEMSIZE[code] and code_of(dtype) == code
    assert torch_dtype("bfloat16") == torch.bfloat16  # a recipe's dtype names still


ODD = {
    "position_ids": torch.arange(16).unsqueeze(0),
    "mask": torch.tensor([True, False, True]),
    "qweight": torch.arange(32, dtype=torch.uint8).reshape(4, 8),
    "f8": torch.linspace(-2, 2, 8).to(torch.float8_e5m2),
    "weight": torch.ones(2, 2),
}


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_integer_bool_and_float8_tensors_are_scanned_and_read_as_stored(tmp_path, fmt):
    if fmt == "bin":
        torch.save(ODD, tmp_path / "pytorch_model.bin")
    else:
        save_file(ODD, tmp_path / "model.safetensors")
    infos = scan_tensors(tmp_path)
    assert {k: v.dtype for k, v in infos.items()} == {
        "position_ids": "I64", "mask": "BOOL", "qweight": "U8", "f8": "F8_E5M2", "weight": "F32",
    }  # fmt: skip
    with ModelReader(tmp_path, infos) as reader:
        for name, t in ODD.items():
            got = reader.get(name)
            assert got.dtype == t.dtype and torch.equal(got.view(torch.uint8), t.view(torch.uint8))

"""Bytes that do not depend on the CPU's vector width: a lock made on an AVX-512 machine
must rebuild on an AVX2 one. torch picks its kernels by the CPU (ATEN_CPU_CAPABILITY
forces a narrower one), and a reduction that adds in vector lanes (torch.softmax) rounds
differently on each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a process per CPU capability

SCRIPT = """
import hashlib, json, torch
from mergepkg.methods import METHODS
def digest(t):
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
g = torch.Generator().manual_seed(11)
base = torch.randn(300, 1000, generator=g) * 0.02
other = base + 0.002 * torch.randn(300, 1000, generator=g)  # near-equal rows: rounding decides
print(json.dumps({
    "capability": torch.backends.cpu.get_cpu_capability(),
    "torch_softmax": digest(torch.softmax(other, dim=-1)),
    "arcee_fusion": {str(d): digest(METHODS["arcee_fusion"].merge(base.to(d), [other.to(d)]))
                     for d in (torch.float32, torch.bfloat16, torch.float16)},
}))
"""


def run_with(capability: str) -> dict:
    env = {**os.environ, "ATEN_CPU_CAPABILITY": capability}
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_arcee_fusion_gives_the_same_bytes_on_avx2_and_the_widest_cpu():
    widest, avx2 = run_with(""), run_with("avx2")
    assert avx2["capability"] == "AVX2"
    assert widest["arcee_fusion"] == avx2["arcee_fusion"]
    if widest["capability"] != "AVX2":  # an AVX-512 machine (as CI's): torch's own softmax differs
        assert widest["torch_softmax"] != avx2["torch_softmax"]

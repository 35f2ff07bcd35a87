"""The allocator settings of the camloc command: freed activation-sized blocks are reused
instead of going back to the kernel (no page faults on the next batch)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHURN = """
import resource
import numpy as np
from camloc.allocator import tune_allocator
applied = tune_allocator()
def churn():  # a forward pass in miniature: ten 8 MB activations, written, then freed
    blocks = [np.ones(1 << 20) for _ in range(10)]
    del blocks
churn()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    churn()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "CAMLOC_MALLOC"}
    if env_value is not None:
        env["CAMLOC_MALLOC"] = env_value
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, env=env,
                         timeout=120, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tuned_allocator_reuses_freed_blocks():
    tuned_applied, tuned = faults(None)
    default_applied, default = faults("default")
    assert tuned_applied and not default_applied
    # 20 rounds of 80 MB: glibc's defaults give the memory back and fault it in again each
    # round (~20k faults per round); tuned, the blocks come back from the heap
    assert default > 50_000
    assert tuned < default / 20

"""Freed CPU memory is reused, not faulted in again (`engine.memory`)."""

import os
import platform
import subprocess
import sys

import pytest

REFAULTS = """
import resource, torch
from reasonbudget.engine.memory import retain_freed_memory
print(retain_freed_memory())
def touch():
    x = torch.ones(50 * 1024 * 1024)  # 200 MB, written: every page touched
    return float(x[-1])
for _ in range(3):  # the heap settles (glibc may fault a block in again while it does)
    touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(retain: str) -> tuple[str, int]:
    env = {**os.environ, "REASONBUDGET_RETAIN_MEMORY": retain}
    out = subprocess.run([sys.executable, "-c", REFAULTS], env=env, capture_output=True, text=True, check=True)
    applied, faults = out.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_a_freed_large_tensor_is_reused_instead_of_faulted_in_again():
    pages = 3 * 200 * 1024 * 1024 // 4096
    assert _faults("0") == ("False", pytest.approx(pages, rel=0.1))  # glibc's default: back to the kernel, refaulted
    applied, faults = _faults("1")
    assert applied == "True" and faults < pages // 20

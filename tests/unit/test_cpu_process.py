"""executor.runtime.cpu_process: what every CPU worker and profiling process sets up."""

import platform
import subprocess
import sys

import pytest

from executor.runtime.cpu_process import MMAP_THRESHOLD, keep_freed_memory

glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="glibc's mallopt only",
)


@glibc
def test_glibc_takes_both_thresholds(monkeypatch):
    monkeypatch.delenv("RLHF_GLIBC_MALLOC", raising=False)
    # mallopt answers 0 for a value it refuses, which would leave the heap's moving thresholds
    # in place without a word.
    assert keep_freed_memory()
    assert MMAP_THRESHOLD == 32 * 2**20


def test_setup_gives_one_torch_thread_in_a_fresh_process():
    code = (
        "import torch; from executor.runtime.cpu_process import setup_cpu_process; "
        "setup_cpu_process(); print(torch.get_num_threads())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_the_environment_can_leave_glibc_alone(monkeypatch):
    monkeypatch.setenv("RLHF_GLIBC_MALLOC", "default")
    assert not keep_freed_memory()

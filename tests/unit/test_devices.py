"""The one device naming rule (plans.devices): torch's GPU names map to device table rows, and
a plan for GPUs is judged against what the machine has before any worker starts."""

from __future__ import annotations

import pytest

from plans import DEVICES
from plans.devices import LocalDevices, backend, device_kind, run_refusal


@pytest.mark.parametrize(
    "name,gib,kind",
    [
        ("NVIDIA H100 80GB HBM3", 79.1, "h100"),
        ("NVIDIA H100 PCIe", 79.1, "h100"),
        ("NVIDIA H200", 139.8, "h200"),
        ("NVIDIA A100-SXM4-80GB", 79.2, "a100"),
        ("NVIDIA A100-SXM4-40GB", 39.4, "a100-40gb"),
        ("NVIDIA A100-PCIE", 39.4, "a100-40gb"),  # the name alone does not say: memory does
        ("NVIDIA L40S", 44.4, "l40s"),
        ("NVIDIA GeForce RTX 4090", 23.6, None),
    ],
)
def test_torch_names_map_to_table_rows(name, gib, kind):
    assert device_kind(name, gib) == kind
    assert kind is None or kind in DEVICES


def test_backend_is_the_only_branch():
    assert backend("cpu") == "cpu"
    assert {backend(d) for d in DEVICES if d != "cpu"} == {"cuda"}


H100X8 = LocalDevices(8, "NVIDIA H100 80GB HBM3", 79.1)


def test_cpu_plans_run_anywhere():
    assert run_refusal("cpu", 4, LocalDevices(0)) is None
    assert run_refusal("cpu", 4, H100X8) is None


def test_gpu_plan_without_cuda_is_one_line():
    why = run_refusal("h100", 8, LocalDevices(0))
    assert why is not None and "\n" not in why and "no CUDA device" in why and "h100" in why


def test_gpu_plan_needs_a_gpu_per_local_worker():
    assert run_refusal("h100", 8, H100X8) is None
    why = run_refusal("h100", 16, H100X8)
    assert why is not None and "16 workers" in why and "torchrun --nnodes" in why


def test_gpu_plan_for_another_device_says_which():
    why = run_refusal("h200", 8, H100X8)
    assert why is not None and "h200" in why and "NVIDIA H100 80GB HBM3 (h100)" in why
    assert run_refusal("my-gpu", 8, H100X8) is None  # own figures: any CUDA GPU

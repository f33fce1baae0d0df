"""One naming rule for devices, shared by `rlhf-plan profile`, `rlhf-plan search`, plans and
`rlhf-run`.

A device is named by its row in the device table (plans.cluster.DEVICES: `h100`, `h200`,
`a100`, `a100-40gb`, `l40s`, `cpu`). A GPU as torch names it ("NVIDIA H100 80GB HBM3") maps to
a row by `device_kind`; a measured profile records that row as its `device`, so a profile,
a search's `--device` and a plan's `cluster.device` compare by equal names. Every row but
`cpu` is a CUDA device: its workers run on NCCL, the `cpu` row's on gloo (`backend`).
"""

from __future__ import annotations

from dataclasses import dataclass

from plans.cluster import DEVICES

CPU = "cpu"

# (substring of torch's lower-cased device name, memory bound in GiB or None, table row).
# Checked in order: the first match names the device. An A100's name carries its memory
# ("A100-SXM4-40GB"); where it does not, the memory torch reports decides.
_GPU_NAMES: tuple[tuple[str, float | None, str], ...] = (
    ("h200", None, "h200"),
    ("h100", None, "h100"),
    ("a100", 48.0, "a100-40gb"),  # under 48 GiB of memory: the 40 GB part
    ("a100", None, "a100"),
    ("l40s", None, "l40s"),
)


def device_kind(torch_name: str, memory_gib: float | None = None) -> str | None:
    """The device table row of a GPU as torch names it (`torch.cuda.get_device_name()`), with
    its memory (GiB) where the name alone is ambiguous; None for a GPU the table lacks."""
    low = torch_name.lower()
    for part, below_gib, kind in _GPU_NAMES:
        if part not in low:
            continue
        if below_gib is not None:
            small = "40gb" in low or (memory_gib is not None and memory_gib < below_gib)
            if not small:
                continue
        return kind
    return None


def backend(device: str) -> str:
    """The torch device type of a table row's workers: `cpu` or `cuda`."""
    return CPU if device == CPU else "cuda"


@dataclass(frozen=True)
class LocalDevices:
    """What this machine has, as the launcher sees it (filled in by the caller: this module
    does not import torch)."""

    cuda_count: int
    """CUDA devices torch sees (0 without CUDA)."""
    gpu_name: str = ""
    """torch's name of device 0 ("" without CUDA)."""
    gpu_memory_gib: float | None = None


def run_refusal(device: str, workers_here: int, local: LocalDevices) -> str | None:
    """Why a plan for `device` cannot start `workers_here` workers on this machine (one line),
    or None when it can. A CPU plan runs anywhere; a GPU plan needs CUDA and a GPU for each
    of this machine's workers. A GPU of another table row than the plan's is said too: the
    plan's estimate (and its memory check) were made for the plan's device. A plan whose
    device is not a table row (its figures given in the cluster) runs on any CUDA GPU."""
    if backend(device) == CPU:
        return None
    if local.cuda_count == 0:
        return (
            f"this plan is for {device} GPUs (cluster.device) and torch sees no CUDA device "
            "here; run it on a machine with those GPUs, or plan for CPU workers with "
            "rlhf-plan search --device cpu"
        )
    if local.cuda_count < workers_here:
        return (
            f"this plan starts {workers_here} workers on this machine (cluster.gpus_per_node) "
            f"but torch sees {local.cuda_count} CUDA device(s) (a plan for several nodes "
            "runs under torchrun --nnodes, one launch per node)"
        )
    kind = device_kind(local.gpu_name, local.gpu_memory_gib)
    if device in DEVICES and kind != device:
        seen = f"{local.gpu_name} ({kind or 'not in the device table'})"
        return (
            f"this plan is for {device} GPUs (cluster.device) but this machine has {seen}; "
            f"plan for it with rlhf-plan search --device {kind or '<its figures>'}"
        )
    return None


def profile_mismatch(profile_device: str, cluster_device: str, source: str) -> str | None:
    """One line when a measured profile (`source`, measured on `profile_device`) would price
    a cluster of other devices, else None: a CPU profile pricing an H100 cluster gives
    plausible-looking numbers for the wrong machine."""
    if profile_device == cluster_device:
        return None
    return f"{source} was measured on {profile_device!r}, but the cluster is {cluster_device!r}"

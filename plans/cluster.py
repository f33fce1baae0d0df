"""The cluster a plan targets, with a table of common devices.

Datasheet figures are public vendor numbers: dense (non-sparse) bf16 tensor-core peak, HBM
bandwidth, memory, and per-device one-direction link bandwidth (NVLink inside a node; one
InfiniBand NIC per GPU between nodes). The `cpu` row is a nominal placeholder for the CPU test
workers; measured profiles replace every figure the cost model uses.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from plans.strict import STRICT


class DeviceInfo(BaseModel):
    """Datasheet figures of one device type."""

    model_config = ConfigDict(frozen=True, **STRICT)

    peak_tflops: float = Field(description="Dense bf16 peak, TFLOP/s.")
    hbm_gbps: float = Field(description="Memory bandwidth, GB/s.")
    memory_gib: float = Field(description="Device memory, GiB.")
    intra_node_gbps: float = Field(
        description="Per-device link bandwidth inside a node, GB/s, one direction."
    )
    inter_node_gbps: float = Field(
        description="Per-device network bandwidth between nodes, GB/s, one direction."
    )


DEVICES: dict[str, DeviceInfo] = {
    # H100 SXM5: 989 TFLOP/s bf16 dense, 3.35 TB/s HBM3, 80 GB, NVLink4 900 GB/s bidir, NDR 400 Gb/s.
    "h100": DeviceInfo(
        peak_tflops=989, hbm_gbps=3350, memory_gib=80, intra_node_gbps=450, inter_node_gbps=50
    ),
    # H200 SXM: same compute as H100, 4.8 TB/s HBM3e, 141 GB.
    "h200": DeviceInfo(
        peak_tflops=989, hbm_gbps=4800, memory_gib=141, intra_node_gbps=450, inter_node_gbps=50
    ),
    # A100 SXM4 80GB: 312 TFLOP/s, 2.039 TB/s, NVLink3 600 GB/s bidir, HDR 200 Gb/s.
    "a100": DeviceInfo(
        peak_tflops=312, hbm_gbps=2039, memory_gib=80, intra_node_gbps=300, inter_node_gbps=25
    ),
    "a100-40gb": DeviceInfo(
        peak_tflops=312, hbm_gbps=1555, memory_gib=40, intra_node_gbps=300, inter_node_gbps=25
    ),
    # L40S: 362 TFLOP/s dense bf16, 864 GB/s GDDR6, 48 GB, PCIe Gen4 x16.
    "l40s": DeviceInfo(
        peak_tflops=362, hbm_gbps=864, memory_gib=48, intra_node_gbps=32, inter_node_gbps=12.5
    ),
    # Nominal CPU worker (one thread); only a measured profile gives meaningful times.
    "cpu": DeviceInfo(
        peak_tflops=0.05, hbm_gbps=20, memory_gib=4, intra_node_gbps=5, inter_node_gbps=1
    ),
}


class ClusterSpec(BaseModel):
    """Nodes of identical devices. Unset device figures are filled from the device table, so a
    saved plan always carries the numbers it was planned with."""

    model_config = ConfigDict(extra="forbid", frozen=True, **STRICT)

    nodes: int = Field(1, ge=1, le=4096, description="Number of nodes.")
    gpus_per_node: int = Field(8, ge=1, le=64, description="Devices per node.")
    device: str = Field("h100", description=f"Device type, one of: {', '.join(DEVICES)}.")
    memory_gib: float | None = Field(None, gt=0, description="Usable memory per device, GiB.")
    peak_tflops: float | None = Field(
        None, gt=0, description="Dense bf16 peak per device, TFLOP/s."
    )
    hbm_gbps: float | None = Field(None, gt=0, description="Memory bandwidth per device, GB/s.")
    intra_node_gbps: float | None = Field(
        None, gt=0, description="Per-device link bandwidth inside a node, GB/s."
    )
    inter_node_gbps: float | None = Field(
        None, gt=0, description="Per-device bandwidth between nodes, GB/s."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_table(cls, data: object) -> object:
        if isinstance(data, dict):
            name = data.get("device", "h100")
            if isinstance(name, str) and name.lower() in DEVICES:
                data = {**data, "device": name.lower()}
                for key, value in DEVICES[name.lower()].model_dump().items():
                    if data.get(key) is None:
                        data[key] = value
        return data

    @model_validator(mode="after")
    def _known_device(self) -> ClusterSpec:
        missing = [k for k in DeviceInfo.model_fields if getattr(self, k) is None]
        if missing:
            raise ValueError(
                f"device {self.device!r} is not in the device table ({', '.join(DEVICES)}); "
                f"give {', '.join(missing)} explicitly"
            )
        return self

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    @property
    def memory_bytes(self) -> float:
        return float(self.memory_gib) * 2**30

    def label(self) -> str:
        return f"{self.nodes}x{self.gpus_per_node} {self.device}"

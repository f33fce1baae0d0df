"""Multi-node launch as the README describes it: one `torchrun --nnodes 2` per node, here two
launchers on localhost acting as 2 nodes x 2 workers, against `rlhf-run`'s own launcher
with 4 workers on one node running a plan of the same shape (the same global ranks in every
mesh). The final weights must be equal bit for bit."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from plans import example_path

pytestmark = [pytest.mark.distributed, pytest.mark.slow]
ITERATIONS = 2
ROOT = Path(__file__).resolve().parents[2]
RUN = [sys.executable, "-m", "cli.run_app"]


def _as_nodes(plan: dict, gpus_per_node: int) -> dict:
    """The 1-node plan with its devices split into nodes of `gpus_per_node`: every mesh keeps
    its global ranks (rank = node * gpus_per_node + gpu)."""
    out = json.loads(json.dumps(plan))
    out["cluster"].update(nodes=plan["cluster"]["gpus_per_node"] // gpus_per_node)
    out["cluster"]["gpus_per_node"] = gpus_per_node
    for alloc in out["allocations"].values():
        m = alloc["mesh"]
        first, n = m["gpu_start"], m["n_gpus"]
        if n <= gpus_per_node:
            m.update(node_start=first // gpus_per_node, gpu_start=first % gpus_per_node)
        else:
            m.update(node_start=first // gpus_per_node, n_nodes=n // gpus_per_node, gpu_start=0)
            m["n_gpus"] = gpus_per_node
    return out


def _free_port_pair() -> int:
    """A port P with P + 1 free too (torchrun's store on P, the run's own store on P + 1)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
                return port
            except OSError:
                continue
    raise RuntimeError("no free pair of ports")


def _weights(out: Path, role: str) -> dict:
    return load_file(str(out / "final" / role / "model.safetensors"))


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="needs torchrun",
)
def test_two_launchers_as_two_nodes_equal_one_node(tmp_path):
    one_node = json.loads(example_path("ppo-tiny-4cpu", "plan").read_text())
    two_nodes = tmp_path / "plan-2x2.json"
    two_nodes.write_text(json.dumps(_as_nodes(one_node, 2)))
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "PYTHONPATH": str(ROOT)}
    args = ["--iterations", str(ITERATIONS), "--checkpoint-every", "0", "--timeout", "120"]

    ref = tmp_path / "one-node"
    r = subprocess.run(
        [*RUN, str(example_path("ppo-tiny-4cpu", "plan")), "--out", str(ref), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-2000:]

    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    port = _free_port_pair()
    out = tmp_path / "two-nodes"
    launchers = [
        subprocess.Popen(
            [
                torchrun,
                "--nnodes", "2",
                "--node-rank", str(node),
                "--nproc-per-node", "2",
                "--master-addr", "127.0.0.1",
                "--master-port", str(port),
                "-m", "cli.run_app",
                str(two_nodes), "--out", str(out), *args,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for node in (0, 1)
    ]  # fmt: skip
    try:
        logs = [p.communicate(timeout=600)[0] for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    for node, (p, log) in enumerate(zip(launchers, logs, strict=True)):
        assert p.returncode == 0, f"node {node}:\n{log[-3000:]}"

    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(ITERATIONS))
    for role in ("actor", "critic"):
        a, b = _weights(ref, role), _weights(out, role)
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].equal(b[k]), f"{role} {k} differs"

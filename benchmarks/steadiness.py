"""How steady is this machine? One process (one thread) times the same whole passes in
back-to-back windows and prints each window's median, then the spread over the windows.

    .venv/bin/python -m benchmarks.steadiness                 # 60 s, 1M-parameter model
    .venv/bin/python -m benchmarks.steadiness --model between-26m --seconds 120

A cost model cannot be held closer to measured times than the machine repeats its own: when a
pass's window medians spread by +-20% on an idle machine, one profile point or one run's
median carries that much noise, whatever the model does. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="between-1m",
                    help="tiny, small, between-1m (1.1M parameters) or between-26m")  # fmt: skip
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to keep timing")
    ap.add_argument("--reps", type=int, default=15, help="passes per window")
    args = ap.parse_args()

    import torch

    from executor.profiling.contention import BATCH, SEQ, repeat_times, timed_model_spec
    from executor.profiling.kernels import shard_pieces
    from executor.profiling.passes import pass_fns

    torch.set_num_threads(1)
    spec = timed_model_spec(args.model)
    model = shard_pieces(spec, 1, torch.float32, "cpu", layers=spec.num_hidden_layers)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    fns = dict(pass_fns(model, BATCH, SEQ, "cpu"), matmul_512=lambda: torch.mm(a, b))
    for fn in fns.values():
        fn()
    print(f"{args.model}: {spec.num_params() / 1e6:.1f}M parameters, batch {BATCH} x {SEQ}; "
          f"window medians of {args.reps} runs, ms")  # fmt: skip
    windows: dict[str, list[float]] = {k: [] for k in fns}
    end = time.monotonic() + args.seconds
    while time.monotonic() < end:
        cells = []
        for k, fn in fns.items():
            windows[k].append(statistics.median(repeat_times(fn, args.reps)) * 1e3)
            cells.append(f"{k} {windows[k][-1]:7.2f}")
        print(time.strftime("%H:%M:%S"), "  ".join(cells), flush=True)
    print(f"\nover {len(windows['infer_pass'])} windows: min / median / max, spread "
          "(max / min), and the median |deviation| from the median")  # fmt: skip
    for k, xs in windows.items():
        med = statistics.median(xs)
        mad = statistics.median(abs(x / med - 1) for x in xs)
        print(f"  {k:<11} {min(xs):7.2f} {med:7.2f} {max(xs):7.2f}  x{max(xs) / min(xs):.2f}  "
              f"{mad:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()

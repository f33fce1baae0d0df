"""benchmarks.live_bytes: the CPU stand-in for an allocator's peak counter that
benchmarks/memory.py measures activations with."""

import torch

from benchmarks.live_bytes import transient_peak


def test_peak_follows_allocations_and_frees_in_time_order():
    def step():
        a = torch.empty(1000)  # 4,000 bytes live
        b = torch.empty(500)  # 6,000
        del a  # 2,000
        c = torch.empty(2000)  # 10,000: the peak
        return b, c

    assert transient_peak(step, []) == 10_000


def test_views_in_place_ops_and_out_arguments_allocate_nothing():
    x, y = torch.zeros(1000), torch.zeros(1000)

    def step():
        x.view(10, 100).t()
        x.add_(1)
        x[5:].mul_(2)
        torch.add(x, 1, out=y)

    assert transient_peak(step, []) == 0


def test_gradients_handed_to_parameters_are_left_out():
    w = torch.nn.Parameter(torch.randn(1000))
    x = torch.randn(1000)

    def step():
        # forward: a 4-byte scalar; backward: the 4,000-byte gradient of w, nothing else large
        torch.dot(w, x).backward()

    assert transient_peak(step, []) >= 4000
    w.grad = None
    assert transient_peak(step, [w]) < 100

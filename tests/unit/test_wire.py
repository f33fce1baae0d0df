"""Message layout and framing of executor.realloc.wire, without processes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from executor.realloc.wire import frames, offsets

DTYPES = [torch.float32, torch.bfloat16, torch.int64, torch.bool]


@st.composite
def _message(draw):
    n = draw(st.integers(1, 8))
    shapes = [tuple(draw(st.lists(st.integers(1, 40), min_size=1, max_size=2))) for _ in range(n)]
    return [(s, draw(st.sampled_from(DTYPES))) for s in shapes]


@settings(max_examples=300, deadline=None, derandomize=True)
@given(_message(), st.integers(1, 600), st.integers(0, 800))
def test_frames_tile_every_tensor_once(like, chunk, direct):
    offs, size = offsets(like)
    for (_, dtype), o in zip(like, offs, strict=True):
        assert o % dtype.itemsize == 0  # its bytes can be viewed as its dtype
    fs = frames(like, chunk, direct)
    covered = []
    for f in fs:
        assert 0 < f.stop - f.start and f.stop <= size
        if f.direct:
            assert len(f.items) == 1 and f.stop - f.start <= chunk
        else:
            assert f.stop - f.start <= chunk or len(f.items) == 1
        covered.extend(range(f.start, f.stop))
    # every tensor's bytes are in exactly one frame; only alignment padding is left out
    data = {
        b
        for (shape, dtype), o in zip(like, offs, strict=True)
        for b in range(o, o + torch.Size(shape).numel() * dtype.itemsize)
    }
    assert len(covered) == len(set(covered)) and data <= set(covered)
    assert len(set(covered) - data) < 8 * len(like)
    # big tensors go alone, small ones never do unless they are alone in their run
    for i, (shape, dtype) in enumerate(like):
        big = torch.Size(shape).numel() * dtype.itemsize >= direct
        assert all(f.direct == big for f in fs if i in f.items)


def test_one_frame_without_chunk():
    like = [((3, 4), torch.float32), ((5,), torch.int64)]
    (f,) = frames(like, None, 0)
    assert (f.start, f.stop, f.items, f.direct) == (0, offsets(like)[1], (0, 1), False)
    assert offsets(like) == ([0, 48], 88)

"""executor.realloc.move.Buffers: kept destination memory is handed out again only for the same
shape, dtype and device, and release() lets it go."""

from __future__ import annotations

import weakref

import torch

from executor.realloc.buffers import Buffers, added


def test_a_given_tensor_comes_back_for_the_same_shape_and_dtype_only():
    b = Buffers()
    t = b.take((3, 4), torch.float32, "cpu")
    b.give([t])
    assert b.nbytes == t.nbytes
    assert b.take((4, 3), torch.float32, "cpu").data_ptr() != t.data_ptr()
    assert b.take((3, 4), torch.bfloat16, "cpu").data_ptr() != t.data_ptr()
    assert b.take((3, 4), torch.float32, torch.device("cpu")) is t
    assert b.nbytes == 0


def test_release_frees_what_it_keeps():
    b = Buffers()
    t = torch.empty(1000)
    gone = weakref.ref(t)
    b.give([t])
    del t
    assert gone() is not None
    b.release()
    assert gone() is None and b.nbytes == 0


def test_added_leaves_out_source_memory():
    src = {"a": torch.zeros(4, 2), "b": torch.zeros(3)}
    new = torch.zeros(2)
    result = {"a": src["a"], "a_rows": src["a"][:2], "c": new}
    assert [t.data_ptr() for t in added(result, src)] == [new.data_ptr()]
    assert len(added(result, None)) == 3

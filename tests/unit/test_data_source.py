"""What a checkpoint records as the run's data: a file by path and content hash, a built-in
data set by its name (rm-tiny's builtin:trees is generated, not read), the synthetic task."""

from __future__ import annotations

from executor.runtime.checkpoints import data_source


def test_files_are_hashed_and_built_in_data_named(tmp_path):
    f = tmp_path / "prompts.jsonl"
    f.write_text('{"prompt": "a"}\n')
    one = data_source(str(f))
    assert one["dataset"] == str(f.resolve()) and len(one["sha256"]) == 64
    f.write_text('{"prompt": "b"}\n')
    assert data_source(str(f))["sha256"] != one["sha256"]
    assert data_source("builtin:trees") == {"dataset": "builtin:trees"}
    assert data_source(None) == {"dataset": "builtin"}

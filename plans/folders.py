"""Model folders and relative paths, checked before any worker starts.

A broken Hugging Face folder used to surface inside a worker, as a Rust safetensors error or a
KeyError in every rank at once. Here each folder is opened the way the loader
(executor.model.hf_checkpoint) will read it: config.json parses, every safetensors header is readable
and covers its file exactly, every tensor the model needs is there with the shape config.json
implies (the table is plans.layout.param_slices, the same one the loader slices by), and the
tokenizer the run will use parses and fits every model's vocabulary. Torch-free: only headers
are read, never tensor data, so checking a 70B folder costs a few small reads.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from plans.errors import PlanError
from plans.layout import param_slices
from plans.model import PRESETS, ModelSpec

if TYPE_CHECKING:
    from plans.plan import Plan

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
"""Any of these in a model folder means the folder brings its own tokenizer."""

BYTE_TOKENIZER_IDS = 259
"""Ids of the built-in byte tokenizer (executor.data.tokenizer.ByteTokenizer: 256 bytes, bos, eos,
pad)."""

BYTE_VOCAB_MAX = 384
"""Largest vocabulary a folder without tokenizer files may have: the byte tokenizer's 259
ids padded to a multiple of 128 (the largest padding in common use). A larger vocabulary
was trained with a real tokenizer, and reading text as bytes would feed it garbage."""

_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
_MAX_HEADER = 100_000_000  # the limit safetensors itself enforces

INDEX = "model.safetensors.index.json"


def resolve_path(value: str, base_dir: Path | None) -> str:
    """A path written in an experiment file, relative to that file's folder; `builtin:` names
    and absolute paths unchanged. Absolute, so a plan written from it runs from any folder."""
    if value.startswith("builtin:") or base_dir is None or Path(value).is_absolute():
        return value
    return os.path.abspath(base_dir / value)


def resolve_experiment_paths(data: dict[str, Any], base: Path | None) -> dict[str, Any]:
    """The one place where the paths an experiment names (dataset, evaluation data, model
    folders, inline checkpoints) are resolved against the experiment file's folder."""
    if base is None:
        return data
    data = dict(data)  # never modify the caller's document
    if isinstance(data.get("dataset"), str):
        data["dataset"] = resolve_path(data["dataset"], base)
    if isinstance(data.get("tokenizer"), str):
        data["tokenizer"] = resolve_path(data["tokenizer"], base)
    ev = data.get("evaluation")
    if isinstance(ev, dict) and isinstance(ev.get("dataset"), str):
        data["evaluation"] = {**ev, "dataset": resolve_path(ev["dataset"], base)}
    if isinstance(data.get("roles"), dict):
        roles_ = {}
        for role, spec in data["roles"].items():
            ref = spec.get("model") if isinstance(spec, dict) else spec
            if isinstance(ref, str) and ref not in PRESETS:
                ref = resolve_path(ref, base)
            elif isinstance(ref, dict) and isinstance(ref.get("checkpoint"), str):
                ref = {**ref, "checkpoint": resolve_path(ref["checkpoint"], base)}
            roles_[role] = {**spec, "model": ref} if isinstance(spec, dict) else ref
        data["roles"] = roles_
    return data


def check_data_files(data: dict[str, Any]) -> None:
    """The dataset files an experiment names exist (after resolve_experiment_paths)."""
    ev = data.get("evaluation")
    named = {
        "dataset": data.get("dataset"),
        "evaluation.dataset": ev.get("dataset") if isinstance(ev, dict) else None,
    }
    for field, value in named.items():
        if isinstance(value, str) and not value.startswith("builtin:"):
            if not Path(value).is_file():
                raise PlanError(f"{value}: no such file", field=field)


def _read_json(path: Path, what: str) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PlanError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"{path}: cannot read {what}: {e}") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"{path}: {what} is not valid JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise PlanError(f"{path}: {what} is nested too deeply") from None


def safetensors_header(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the header of one safetensors file; PlanError naming the
    file when the header is unreadable or the data section is not exactly what it describes
    (a truncated download, a file cut short by a full disk)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > min(_MAX_HEADER, size - 8):
                raw = None
            else:
                raw = f.read(n)
    except OSError as e:
        raise PlanError(f"{path}: cannot read: {e.strerror or e}") from None
    if size == 0:
        raise PlanError(f"{path}: empty file (no safetensors header)")
    if raw is None:
        raise PlanError(f"{path}: truncated or not safetensors (bad header length)")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PlanError(f"{path}: safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise PlanError(f"{path}: safetensors header is not a JSON object")
    shapes: dict[str, tuple[int, ...]] = {}
    spans: list[tuple[int, int]] = []
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            ok = all(isinstance(d, int) and d >= 0 for d in [*shape, begin, end]) and begin <= end
        except (TypeError, KeyError, ValueError):
            ok = False
        if not ok:
            raise PlanError(f"{path}: tensor {key!r} has a malformed header entry")
        if dtype not in _DTYPE_BYTES:
            raise PlanError(f"{path}: tensor {key!r} has dtype {dtype!r}, which cannot be loaded")
        if end - begin != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise PlanError(f"{path}: tensor {key!r}: its byte range does not match its shape")
        shapes[key] = tuple(shape)
        spans.append((begin, end))
    data = size - 8 - n
    described = max((e for _, e in spans), default=0)
    if described > data:
        raise PlanError(
            f"{path}: truncated: the header describes {described} bytes of tensor data, "
            f"the file holds {data}"
        )
    pos = 0
    for begin, end in sorted(spans):
        if begin != pos:
            raise PlanError(f"{path}: tensor data overlaps or has gaps (not a safetensors file)")
        pos = end
    if pos != data:
        raise PlanError(f"{path}: {data - pos} bytes after the last tensor (corrupt file)")
    return shapes


def _weight_files(folder: Path) -> dict[Path, set[str] | None]:
    """The files the loader reads, each with the tensors an index assigns to it (None: all)."""
    index = folder / INDEX
    if index.exists():
        doc = _read_json(index, "the shard index")
        wmap = doc.get("weight_map") if isinstance(doc, dict) else None
        if not isinstance(wmap, dict) or not all(isinstance(f, str) for f in wmap.values()):
            raise PlanError(f"{index}: no weight_map object of tensor -> file name")
        shards: dict[Path, set[str]] = {}
        for key, name in wmap.items():
            if Path(name).name != name:  # a shard must lie in the folder itself
                raise PlanError(f"{index}: shard {name!r} is not a file name in the folder")
            shards.setdefault(folder / name, set()).add(key)
        return dict(shards.items())
    return {f: None for f in sorted(folder.glob("*.safetensors"))}


def check_weights(spec: ModelSpec, folder: Path) -> None:
    """Every tensor the model loads is in the folder with the shape its config implies."""
    files = _weight_files(folder)
    if not files:
        raise PlanError(
            f"{folder}: no weights (*.safetensors); a model folder's weights are loaded, "
            "never initialised randomly (use a preset or an inline spec for random weights)"
        )
    found: dict[str, tuple[Path, tuple[int, ...]]] = {}
    for path, keys in files.items():
        if not path.is_file():
            raise PlanError(f"{path}: no such file (named in {INDEX})")
        shapes = safetensors_header(path)
        for key in keys if keys is not None else shapes:
            if key not in shapes:
                raise PlanError(f"{path}: no tensor {key!r} (named in {INDEX})")
            found[key] = (path, shapes[key])
    for sl in param_slices(spec, 1, 0, 1, 0):
        if sl.source != sl.name:
            continue  # a tied head: read from the embedding, checked there
        if sl.source not in found:
            if sl.name == "score.weight":
                continue  # a value head missing from an LM folder is initialised (seeded)
            raise PlanError(f"{folder}: no tensor {sl.source!r} in the weights")
        path, shape = found[sl.source]
        if shape != sl.full_shape:
            raise PlanError(
                f"{path}: {sl.source} has shape {list(shape)}, but config.json implies "
                f"{list(sl.full_shape)}"
            )


def tokenizer_ids(folder: Path) -> int | None:
    """Token ids the folder's tokenizer.json uses (highest id + 1), None when it has none.
    tokenizer_config.json must parse too; a lone tokenizer.model (sentencepiece) is counted
    when it is loaded, before the workers start (executor.data.tokenizer.tokenizer_for)."""
    config = folder / "tokenizer_config.json"
    if config.exists() and not isinstance(_read_json(config, "the tokenizer config"), dict):
        raise PlanError(f"{config}: not a JSON object")
    path = folder / "tokenizer.json"
    if not path.exists():
        return None
    doc = _read_json(path, "the tokenizer")
    model = doc.get("model") if isinstance(doc, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict):
        ids = list(vocab.values())
    elif isinstance(vocab, list):  # unigram: [piece, score] rows, the id is the position
        ids = [len(vocab) - 1] if vocab else []
    else:
        raise PlanError(f"{path}: no model.vocab (not a tokenizers file)")
    added = doc.get("added_tokens") or []
    ids += [t.get("id") for t in added if isinstance(t, dict)] if isinstance(added, list) else []
    if not ids or not all(isinstance(i, int) and i >= 0 for i in ids):
        raise PlanError(f"{path}: token ids are not non-negative integers")
    return max(ids) + 1


def has_tokenizer(folder: Path) -> bool:
    return any((folder / f).exists() for f in TOKENIZER_FILES)


def tokenizer_folder(specs: list[ModelSpec], named: str | None = None) -> Path | None:
    """The folder whose tokenizer the run uses: the experiment's `tokenizer` when it names
    one, else the first model folder that has one."""
    if named is not None:
        return Path(named)
    for spec in specs:
        if spec.checkpoint and has_tokenizer(Path(spec.checkpoint)):
            return Path(spec.checkpoint)
    return None


def byte_tokenizer_misfit(spec: ModelSpec) -> str | None:
    """Why the byte tokenizer (used when no folder has tokenizer files) cannot serve this
    model folder, or None: a vocabulary this large was trained with a real tokenizer."""
    if not spec.checkpoint:
        return None
    none = (
        f"{spec.checkpoint}: no tokenizer files ({', '.join(TOKENIZER_FILES)}) in any model folder"
    )
    if spec.vocab_size > BYTE_VOCAB_MAX:
        return (
            f"{none}, and a vocabulary of {spec.vocab_size} needs its own tokenizer (the "
            f"built-in byte tokenizer has {BYTE_TOKENIZER_IDS} ids)"
        )
    if spec.vocab_size < BYTE_TOKENIZER_IDS:
        return (
            f"{none}, and the built-in byte tokenizer's {BYTE_TOKENIZER_IDS} ids do not fit "
            f"the vocabulary of {spec.vocab_size}"
        )
    return None


def tokenizer_identity(folder: Path) -> bytes | None:
    """What makes two tokenizer folders the same tokenizer (their tokenizer.json, else their
    sentencepiece tokenizer.model, byte for byte), None without either."""
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            try:
                return (folder / name).read_bytes()
            except OSError as e:
                raise PlanError(f"{folder / name}: cannot read: {e.strerror or e}") from None
    return None


def check_one_tokenizer(specs: Mapping[str, ModelSpec], source: Path) -> None:
    """Every model folder that brings a tokenizer brings the run's: ids mean the same text in
    every role only then (re-tokenising through text between roles is not implemented)."""
    want = tokenizer_identity(source)
    for role, spec in specs.items():
        folder = Path(spec.checkpoint) if spec.checkpoint else None
        if folder is None or folder == source or not has_tokenizer(folder):
            continue
        if tokenizer_identity(folder) != want:
            raise PlanError(
                f"{folder}: its tokenizer differs from the run's ({source}); roles with "
                "different tokenizers are not supported (no re-tokenisation through text)",
                field=f"roles.{role}.model",
            )


def check_model_folders(specs: Mapping[str, ModelSpec], tokenizer: str | None = None) -> None:
    """Every role's model folder and the tokenizer the run will use (the experiment's
    `tokenizer` folder when named); PlanError naming the role (field) and the file."""
    if tokenizer is not None and not (Path(tokenizer).is_dir() and has_tokenizer(Path(tokenizer))):
        raise PlanError(
            f"{tokenizer}: not a folder with tokenizer files ({', '.join(TOKENIZER_FILES)})",
            field="tokenizer",
        )
    for role, spec in specs.items():
        if not spec.checkpoint:
            continue
        folder = Path(spec.checkpoint)
        try:
            if not folder.is_dir():
                raise PlanError(f"{folder}: no such folder")
            config = _read_json(folder / "config.json", "config.json")
            if not isinstance(config, dict):
                raise PlanError(f"{folder / 'config.json'}: not a JSON object")
            check_weights(spec, folder)
            ids = tokenizer_ids(folder)
            if ids is not None and ids > spec.vocab_size:
                raise PlanError(
                    f"{folder / 'tokenizer.json'}: {ids} token ids, more than the model's "
                    f"vocab_size={spec.vocab_size}"
                )
        except PlanError as e:
            raise PlanError(e.reason, field=f"roles.{role}.model") from None
    if not any(s.checkpoint for s in specs.values()) and tokenizer is None:
        return  # presets and inline specs: tokenizer_for checks the byte tokenizer at run time
    source = tokenizer_folder(list(specs.values()), tokenizer)
    if source is not None:
        check_one_tokenizer(specs, source)
    if source is None:
        for role, spec in specs.items():
            if (why := byte_tokenizer_misfit(spec)) is not None:
                raise PlanError(why, field=f"roles.{role}.model")
        return
    ids = tokenizer_ids(source)
    for role, spec in specs.items():
        if ids is not None and ids > spec.vocab_size:
            raise PlanError(
                f"{source / 'tokenizer.json'} (the run's tokenizer) has {ids} token ids, more "
                f"than this model's vocab_size={spec.vocab_size}",
                field=f"roles.{role}.model",
            )


def check_plan_folders(plan: Plan, source: str | None = None) -> None:
    """check_model_folders for the experiment a plan embeds, naming fields as the plan does.
    Loading a plan does not open folders (estimate, show and diff work on any machine);
    rlhf-run and `rlhf-plan validate` call this before anything reads the weights."""
    exp = plan.experiment
    try:
        check_model_folders({r: exp.model(r) for r in exp.roles}, exp.tokenizer)
    except PlanError as e:
        raise PlanError(e.reason, field=f"experiment.{e.field}", source=source) from None

"""Tokenizers behind one small interface: a built-in byte-level one (no files needed; its
259 ids fit the tiny presets' vocab of 264) and a wrapper for a local HF tokenizer folder."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from plans.folders import byte_tokenizer_misfit, tokenizer_folder


class Tokenizer(Protocol):
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int
    vocab_size: int

    def encode(self, text: str, add_bos: bool = True) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0-255; then bos, eos, pad (plans.folders.BYTE_TOKENIZER_IDS)."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id, *ids] if add_bos else ids

    def decode(self, ids: list[int]) -> str:
        """Special ids are dropped; invalid UTF-8 becomes U+FFFD."""
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")


class HFTokenizer:
    """A tokenizer folder saved by transformers (tokenizer.json etc.), read offline."""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        self.bos_token_id = self.tok.bos_token_id
        self.eos_token_id = self.tok.eos_token_id
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        if pad is None:
            raise ValueError(f"{folder}: tokenizer has neither a pad nor an eos token")
        self.pad_token_id = int(pad)
        self.vocab_size = len(self.tok)

    def encode(self, text: str, add_bos: bool = True) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False)
        return [self.bos_token_id, *ids] if add_bos and self.bos_token_id is not None else ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.tok, "chat_template", None))

    def chat(self, messages: list[dict[str, str]]) -> str:
        """A conversation rendered with the tokenizer's chat template, ending in the prompt
        for the assistant's turn (the text to encode, without another bos)."""
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def tokenizer_for(specs, named: str | None = None) -> Tokenizer:
    """The run's tokenizer: the HF tokenizer saved in the first model folder that has one (all
    roles must share a vocabulary) or the experiment's `tokenizer` folder (`named`), else the
    built-in byte tokenizer. Its ids must fit every
    model's vocabulary, and the byte tokenizer never stands in for the tokenizer a model
    folder's vocabulary says it was trained with (plans.folders.byte_tokenizer_misfit)."""
    from plans import PlanError

    specs = list(specs)
    folder = tokenizer_folder(specs, named)
    tok: Tokenizer
    if folder is not None:
        try:
            tok = HFTokenizer(folder)
        except Exception as e:  # transformers raises anything from OSError to TypeError
            msg = " ".join(str(e).split())[:200]
            raise PlanError(
                f"{folder}: cannot load the tokenizer: {type(e).__name__}: {msg}", field="roles"
            ) from None
    else:
        for spec in specs:
            if (why := byte_tokenizer_misfit(spec)) is not None:
                raise PlanError(why, field="roles")
        tok = ByteTokenizer()
    for spec in specs:
        if tok.vocab_size > spec.vocab_size:
            raise PlanError(
                f"the tokenizer has {tok.vocab_size} ids but the {spec.name} model's vocabulary "
                f"has {spec.vocab_size}",
                field="roles",
            )
    return tok


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged id lists -> (input_ids [B, L], attention_mask [B, L]) padded on the left, the
    layout generation expects (every prompt ends at the same column)."""
    width = max((len(s) for s in seqs), default=0)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids, mask

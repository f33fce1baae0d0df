"""Hugging Face checkpoint folders and tokenizers, one process."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from executor.data.tokenizer import ByteTokenizer, HFTokenizer, left_pad
from executor.model import Transformer
from executor.model.hf_checkpoint import load_checkpoint_, save_checkpoint
from executor.model.hf_config import spec_from_folder, transformers_model
from executor.model.weights import random_init_
from executor.parallel.context import ParallelContext
from plans.model import RopeScaling, preset

CTX = ParallelContext.single()


def _ids():
    return torch.randint(0, 264, (2, 20), generator=torch.Generator().manual_seed(0))


def _pos(ids):
    return torch.arange(ids.shape[1]).expand(ids.shape[0], -1)


@pytest.mark.parametrize("tied", [False, True])
def test_round_trip_is_bitwise_and_transformers_loads_it(tmp_path, tied):
    spec = preset("tiny").model_copy(update={"tie_word_embeddings": tied})
    ours = random_init_(Transformer(spec), seed=3)
    assert save_checkpoint(ours, CTX, tmp_path / "ck") == tmp_path / "ck"
    back = load_checkpoint_(Transformer(spec_from_folder(tmp_path / "ck")), tmp_path / "ck")
    for (k, a), (k2, b) in zip(ours.state_dict().items(), back.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b), k
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "ck").eval()
    ids = _ids()
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids, _pos(ids))).abs().max() < 1e-5


def test_value_model_loads_as_sequence_classification(tmp_path):
    spec = preset("tiny", head="value")
    ours = random_init_(Transformer(spec), seed=4)
    save_checkpoint(ours, CTX, tmp_path / "rm")
    assert spec_from_folder(tmp_path / "rm").head == "value"
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    ids = _ids()
    with torch.no_grad():
        ref = hf.score(hf.model(ids).last_hidden_state).squeeze(-1)
        assert (ref - ours(ids, _pos(ids))).abs().max() < 1e-5


def test_loads_transformers_folders_including_sharded_ones(tmp_path):
    spec = preset("tiny")
    src = random_init_(Transformer(spec), seed=9)
    hf = transformers_model(spec, src.state_dict())
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "many", max_shard_size="100KB")
    assert (tmp_path / "many" / "model.safetensors.index.json").exists()
    for folder in ("one", "many"):
        got = load_checkpoint_(Transformer(spec_from_folder(tmp_path / folder)), tmp_path / folder)
        for k, v in src.state_dict().items():
            assert torch.equal(got.state_dict()[k], v), (folder, k)


def test_transformers5_rope_parameters_are_read(tmp_path):
    spec = preset("tiny").model_copy(
        update={
            "rope_theta": 12345.0,
            "rope_scaling": RopeScaling(
                rope_type="llama3",
                factor=4.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        }
    )
    transformers_model(spec).save_pretrained(tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert "rope_parameters" in cfg
    got = spec_from_folder(tmp_path / "hf")
    assert got.rope_theta == 12345.0 and got.rope_scaling.factor == 4.0


def test_critic_from_lm_checkpoint_and_shape_errors(tmp_path):
    lm = random_init_(Transformer(preset("tiny")), seed=1)
    save_checkpoint(lm, CTX, tmp_path / "lm")
    critic = load_checkpoint_(Transformer(preset("tiny", head="value")), tmp_path / "lm")
    assert critic.score is not None and critic.score.weight.abs().sum() > 0
    with pytest.raises(KeyError, match="score.weight"):
        load_checkpoint_(Transformer(preset("tiny", head="value")), tmp_path / "lm", None)
    with pytest.raises(ValueError, match="shape"):
        load_checkpoint_(Transformer(preset("small")), tmp_path / "lm")


def test_save_replaces_an_existing_folder_atomically(tmp_path):
    spec = preset("tiny")
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "stale.txt").write_text("old")
    save_checkpoint(random_init_(Transformer(spec), seed=1), CTX, tmp_path / "ck")
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary or old folder left


def test_byte_tokenizer_round_trip_and_left_padding():
    tok = ByteTokenizer()
    ids = tok.encode("héllo ✓")
    assert ids[0] == tok.bos_token_id and max(ids) < preset("tiny").vocab_size
    assert tok.decode(ids + [tok.eos_token_id, tok.pad_token_id]) == "héllo ✓"
    batch, mask = left_pad([[1, 2, 3], [4]], tok.pad_token_id)
    assert batch.tolist() == [[1, 2, 3], [258, 258, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_hf_tokenizer_wrapper_reads_a_local_folder(tmp_path):
    _word_tokenizer(tmp_path / "tok")
    tok = HFTokenizer(tmp_path / "tok")
    assert tok.encode("hello world") == [1, 3, 4]
    assert tok.decode([1, 3, 4, 2]) == "hello world"
    assert (tok.pad_token_id, tok.eos_token_id, tok.vocab_size) == (0, 2, 6)


def _word_tokenizer(folder):
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4, "[UNK]": 5}
    save_word_tokenizer(folder, vocab, by_character=False)


def save_word_tokenizer(folder, vocab: dict[str, int], by_character: bool) -> None:
    """A word-level HF tokenizer over `vocab` (which holds <pad>, <s>, </s> and [UNK]) saved to
    `folder`; words are split at whitespace, or every character is a word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = (
        pre_tokenizers.Split("", "isolated") if by_character else pre_tokenizers.Whitespace()
    )
    PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="[UNK]",
    ).save_pretrained(folder)


def test_run_tokenizer_comes_from_a_model_folder_that_has_one(tmp_path):
    from executor.data.tokenizer import tokenizer_for
    from plans import PlanError

    spec = preset("tiny")
    model = Transformer(spec)
    random_init_(model, 0)
    save_checkpoint(model, ParallelContext.single(), tmp_path / "m")
    with_folder = spec_from_folder(tmp_path / "m")
    assert isinstance(tokenizer_for([spec, with_folder]), ByteTokenizer)  # no tokenizer files
    _word_tokenizer(tmp_path / "m")
    tok = tokenizer_for([spec, spec_from_folder(tmp_path / "m")])
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 6
    small = spec.model_copy(update={"vocab_size": 4, "name": "too-small"})
    with pytest.raises(PlanError, match="too-small"):
        tokenizer_for([spec_from_folder(tmp_path / "m"), small])

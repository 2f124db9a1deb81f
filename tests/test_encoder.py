"""Our encoder against the oracle, transformers' BERT: same weights, same outputs."""

from __future__ import annotations

import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import BertConfig, BertForPreTraining, BertModel  # noqa: E402

from searchpipe.errors import InputError  # noqa: E402
from searchpipe.models.bert_io import config_to_hf, load_encoder, load_model  # noqa: E402
from searchpipe.models.encoder import (  # noqa: E402
    EncoderConfig,
    PretrainingModel,
    TransformerEncoder,
)
from searchpipe.models.resolve import resolve_model  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One torch thread: on a shared 2-core machine, OpenMP threads waiting on each other
    make small ops many times slower; the results do not depend on the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def minilm() -> tuple[TransformerEncoder, dict[str, BertModel]]:
    path = resolve_model("minilm").path
    ours = load_encoder("minilm")
    hf = {
        impl: BertModel.from_pretrained(path, attn_implementation=impl).eval()
        for impl in ("eager", "sdpa")
    }
    return ours, hf


def padded_batch(lengths: list[int], vocab: int, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded batch of random tokens; segment 1 from the middle of each sequence."""
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    types = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(min(1000, vocab // 2), vocab, (n,), generator=g)
        ids[i, 0] = 101  # [CLS]
        mask[i, :n] = 1
        types[i, n // 2 : n] = 1 if n > 1 else 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


@pytest.mark.parametrize(
    ("impl", "lengths"),
    [
        # lengths 1..max_len: both ends, powers of two and their neighbours, padded batches
        ("sdpa", [512, 511, 1]),
        ("sdpa", [255, 128, 65, 64, 31, 7, 3, 2]),
        ("eager", [128, 7, 1]),  # the plain-math reference
        ("sdpa", [1]),  # a lone [CLS]: nothing padded, no mask at all
        ("sdpa", [3, 3]),
    ],
)
def test_minilm_last_hidden_state_matches_transformers(minilm, impl, lengths):
    ours, hf = minilm
    batch = padded_batch(lengths, 30522, seed=len(lengths))
    with torch.no_grad():
        expected = hf[impl](**batch).last_hidden_state
        got = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert got.shape == expected.shape
    real = batch["attention_mask"].bool()
    assert (got - expected)[real].abs().max().item() <= 1e-5
    assert batch["token_type_ids"].max() == (1 if max(lengths) > 1 else 0)


def test_minilm_on_real_text_with_two_segments(minilm):
    from searchpipe.models.tokenizer import load_tokenizer

    ours, hf = minilm
    tok = load_tokenizer(resolve_model("minilm").path)
    pairs = [
        ("What causes tides?", "The moon's gravity pulls on the oceans."),
        ("Short.", "A much longer second segment, with punctuation; and clauses, too."),
    ]
    enc = tok.encode_batch(pairs)
    T = max(len(e.ids) for e in enc)
    ids = torch.tensor([e.ids + [0] * (T - len(e.ids)) for e in enc])
    types = torch.tensor([e.type_ids + [0] * (T - len(e.ids)) for e in enc])
    mask = (torch.arange(T)[None] < torch.tensor([len(e.ids) for e in enc])[:, None]).long()
    assert types.max() == 1
    with torch.no_grad():
        expected = hf["sdpa"](input_ids=ids, attention_mask=mask, token_type_ids=types)
        got = ours(ids, mask, types)
        pooled = ours.pool(got)
    assert (got - expected.last_hidden_state)[mask.bool()].abs().max() <= 1e-5
    assert (pooled - expected.pooler_output).abs().max() <= 1e-5


def test_random_tiny_bert_with_pretraining_heads_matches(tmp_path):
    """A random BertForPreTraining (heads included) loads into ours: logits and losses agree."""
    torch.manual_seed(0)
    hf_config = BertConfig(
        vocab_size=211, hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=96, max_position_embeddings=40, type_vocab_size=2,
    )  # fmt: skip
    hf = BertForPreTraining(hf_config).eval()
    with torch.no_grad():  # make the head biases non-zero, so a missed bias would show
        hf.cls.predictions.bias.normal_()
        hf.cls.seq_relationship.bias.normal_()
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert isinstance(ours, PretrainingModel)
    batch = padded_batch([40, 25, 3], 211, seed=1)
    batch["input_ids"][batch["input_ids"] >= 211] = 5
    g = torch.Generator().manual_seed(2)
    labels = torch.where(
        (torch.rand(batch["input_ids"].shape, generator=g) < 0.3) & batch["attention_mask"].bool(),
        batch["input_ids"],
        torch.full_like(batch["input_ids"], -100),
    )
    nsp = torch.tensor([0, 1, 0])
    with torch.no_grad():
        expected = hf(**batch, labels=labels, next_sentence_label=nsp)
        got = ours(
            batch["input_ids"], labels, nsp, batch["attention_mask"], batch["token_type_ids"]
        )
    where = labels != -100
    assert (got.mlm_logits - expected.prediction_logits[where]).abs().max() <= 1e-5
    assert (got.nsp_logits - expected.seq_relationship_logits).abs().max() <= 1e-5
    assert abs(got.loss.item() - expected.loss.item()) <= 1e-5


def test_unprefixed_pytorch_bin_folder_loads(tmp_path):
    """A folder with pytorch_model.bin (no 'bert.' prefix, no heads) loads as an encoder."""
    torch.manual_seed(0)
    config = EncoderConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_len=16)
    hf = BertModel(BertConfig(**config_to_hf(config))).eval()
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps(config_to_hf(config)))
    ours = load_model(tmp_path)
    assert isinstance(ours, TransformerEncoder)
    ids = torch.randint(1, 97, (2, 16))
    with torch.no_grad():
        assert (ours(ids) - hf(input_ids=ids).last_hidden_state).abs().max() <= 1e-5


def test_non_bert_folder_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(InputError, match="model_type is 'roberta'"):
        load_encoder(tmp_path)


def test_too_long_input_names_the_limit():
    enc = TransformerEncoder(EncoderConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2,
                                           d_ff=32, max_len=8))  # fmt: skip
    with pytest.raises(ValueError, match="longer than max_len=8"):
        enc(torch.ones(1, 9, dtype=torch.long))

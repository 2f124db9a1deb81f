"""The fused inference encoder against our encoder (itself held to transformers' BERT)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from test_encoder import padded_batch
from test_models import TEXTS
from transformers import BertConfig, BertForMaskedLM

from searchpipe.models import biencoder as biencoder_mod
from searchpipe.models import inference
from searchpipe.models.bert_io import load_encoder
from searchpipe.models.biencoder import BiEncoder
from searchpipe.models.encoder import SequenceClassifier
from searchpipe.models.inference import InferenceEncoder, for_transformers
from searchpipe.models.precision import bf16_supported

LENGTHS = [512, 300, 37, 2, 1]  # padded batch: both ends of the range, both segment ids


@pytest.fixture(scope="module")
def reference() -> tuple[torch.nn.Module, dict[str, torch.Tensor], torch.Tensor]:
    ours = load_encoder("minilm")
    batch = padded_batch(LENGTHS, 30522, seed=3)
    with torch.no_grad():
        hidden = ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    return ours, batch, hidden


@pytest.mark.parametrize("fused", [True, False], ids=["onednn", "plain"])
def test_fp32_matches_our_encoder(reference, monkeypatch, fused) -> None:  # type: ignore[no-untyped-def]
    _, batch, expected = reference
    if fused and not inference.onednn_available():
        pytest.skip("this PyTorch build has no oneDNN")
    monkeypatch.setattr(inference, "onednn_available", lambda device="cpu": fused)
    fast = InferenceEncoder(load_encoder("minilm"), torch.float32)
    assert all(
        lin.fused == fused
        for layer in fast.layers
        for lin in (layer.qkv, layer.dense, layer.intermediate, layer.output)
    )
    got = fast(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert (got - expected)[real].abs().max().item() <= 1e-5


def test_bf16_keeps_the_pooled_direction(reference) -> None:  # type: ignore[no-untyped-def]
    if not bf16_supported():
        pytest.skip("this CPU has no native bf16")
    _, batch, expected = reference
    fast = InferenceEncoder(load_encoder("minilm"), torch.bfloat16)
    got = fast(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]).float()
    mask = batch["attention_mask"][..., None].float()
    mean = lambda h: (h * mask).sum(1) / mask.sum(1)  # noqa: E731
    cosine = torch.nn.functional.cosine_similarity(mean(got), mean(expected))
    assert cosine.min().item() > 0.999


def test_classifier_logits_match_sequence_classifier(reference) -> None:  # type: ignore[no-untyped-def]
    ours, batch, _ = reference
    torch.manual_seed(0)
    model = SequenceClassifier(ours.config, 1, load_encoder("minilm")).eval()
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    fast = InferenceEncoder(load_encoder("minilm"), torch.float32, model.classifier)
    got = fast.logits(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    assert (got - expected).abs().max().item() <= 1e-5


def test_other_architectures_run_through_transformers(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
    )
    assert for_transformers(BertForMaskedLM(config), torch.float32) is None
    # a bi-encoder whose body we do not run still embeds exactly as sentence-transformers
    monkeypatch.setattr(biencoder_mod, "transformer_body", lambda *a, **k: None)
    enc = BiEncoder("minilm", precision="fp32")
    assert enc.body is None and enc.model is not None
    st = SentenceTransformer(str(enc.ref.path), device="cpu")
    assert np.abs(enc.encode(TEXTS) - st.encode(TEXTS)).max() < 1e-5


def test_bert_bi_encoder_runs_the_fused_body() -> None:
    enc = BiEncoder("minilm", precision="fp32")
    assert isinstance(enc.body, InferenceEncoder) and enc.model is None

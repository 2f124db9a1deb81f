"""Bi-encoder and cross-encoder fast paths against sentence-transformers itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sentence_transformers import CrossEncoder, SentenceTransformer

from searchpipe.errors import InputError
from searchpipe.models import precision as precision_mod
from searchpipe.models.batching import Packed, plan_batches
from searchpipe.models.biencoder import BiEncoder
from searchpipe.models.crossencoder import CrossEncoderScorer
from searchpipe.models.resolve import MINILM_SHA256, resolve_model

TEXTS = [
    "A bat is a flying mammal.",
    "x",
    "The stock market fell sharply on Monday after the central bank raised interest rates " * 6,
    "Volcanoes form where tectonic plates diverge or converge.",
    "long " * 400,  # longer than the model's 256 tokens: truncated
]


def test_plan_batches_sorts_by_length_and_respects_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 300, size=500)
    batches = plan_batches(lengths, token_budget=2048, max_rows=64)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(500))  # every row exactly once
    longest = [lengths[b].max() for b in batches]
    assert longest == sorted(longest, reverse=True)  # longest batches first
    for b in batches:
        assert len(b) == 1 or lengths[b].max() * len(b) <= 2048
        assert len(b) <= 64


def test_packed_padding_matches_rows() -> None:
    ids = [[101, 5, 6, 102], [101, 102], [101, 7, 102]]
    packed = Packed.from_encoding(ids, None)
    padded, types, mask = packed.pad(np.array([2, 0, 1]), pad_id=0)
    assert padded.tolist() == [[101, 7, 102, 0], [101, 5, 6, 102], [101, 102, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    assert types.sum() == 0


def test_minilm_alias_is_verified() -> None:
    ref = resolve_model("minilm")
    assert ref.weights_sha256 == MINILM_SHA256


def test_missing_model_folder_and_offline_hub_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))
    with pytest.raises(InputError) as err:
        resolve_model("some-org/some-model")  # HF_HUB_OFFLINE=1 in tests
    assert "local model folder" in str(err.value) and "\n" not in str(err.value)


def test_fp32_embeddings_equal_sentence_transformers(encoder: BiEncoder) -> None:
    st = SentenceTransformer(str(encoder.ref.path), device="cpu")
    fp32 = BiEncoder(encoder.ref, precision="fp32")
    ours = fp32.encode(TEXTS)
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() < 1e-5
    assert fp32.truncated == 1


def test_bf16_embeddings_keep_cosine(encoder: BiEncoder) -> None:
    if not precision_mod.bf16_supported():
        pytest.skip("this CPU has no native bf16")
    fp32 = BiEncoder(encoder.ref, precision="fp32").encode(TEXTS)
    bf16 = BiEncoder(encoder.ref, precision="bf16").encode(TEXTS)
    cosine = (fp32 * bf16).sum(1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cosine.min() > 0.999


def test_precision_auto_falls_back_to_fp32_and_explicit_bf16_is_refused_without_bf16(
    monkeypatch: pytest.MonkeyPatch, encoder: BiEncoder
) -> None:
    monkeypatch.setattr(precision_mod, "bf16_supported", lambda device="cpu": False)
    assert precision_mod.resolve_precision("auto") == "fp32"
    with pytest.raises(InputError, match="bf16 is not supported"):
        precision_mod.resolve_precision("bf16")
    assert BiEncoder(encoder.ref, precision="auto").precision == "fp32"
    with pytest.raises(InputError, match="not one of"):
        precision_mod.resolve_precision("int4")


def test_cross_encoder_scores_equal_predict(cross_encoder_dir: Path) -> None:
    queries = ["what is a bat?"] * 4 + ["how do volcanoes form?"]
    docs = [
        "Bats are flying mammals.",
        "A baseball bat is made of wood. " * 80,
        "Caves are dark.",
        "x",
        TEXTS[3],
    ]
    ours = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32")
    theirs = CrossEncoder(str(cross_encoder_dir), device="cpu").predict(
        list(zip(queries, docs, strict=True))
    )
    assert np.abs(ours.score(queries, docs) - theirs).max() < 1e-5
    assert ours.truncated == 1


def test_cross_encoder_pairs_are_cut_as_sentence_transformers_cuts_them(
    cross_encoder_dir: Path,
) -> None:
    """One tokenizer pass gives the ids that the tokenizer with ``longest_first`` truncation
    gives, and counts a pair as cut only when it was longer than the maximum: pairs one
    token under, at and over it, a long query against a short document, and both long."""
    ours = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32", max_length=32)
    tok = ours.tokenizer
    queries = ["bat"] * 3 + ["why " * 40, "why " * 40, ""]
    docs = ["cave " * 27, "cave " * 28, "cave " * 29, "caves are dark", "dark " * 50, "x " * 40]
    whole = [len(ids) for ids in tok(queries, docs, truncation=False)["input_ids"]]
    assert whole[:3] == [31, 32, 33]  # under, at and over the maximum
    oracle = tok(queries, docs, truncation="longest_first", max_length=32)
    packed = ours.tokenize(queries, docs)
    for i, (ids, types) in enumerate(
        zip(oracle["input_ids"], oracle["token_type_ids"], strict=True)
    ):
        span = slice(packed.starts[i], packed.starts[i] + packed.lengths[i])
        assert packed.ids[span].tolist() == ids and packed.types[span].tolist() == types
    assert ours.truncated == sum(n > 32 for n in whole) == 4


def test_cross_encoder_needs_one_logit(tmp_path: Path) -> None:
    model = CrossEncoder(str(resolve_model("minilm").path), num_labels=3, device="cpu")
    model.save(str(tmp_path / "three"))
    with pytest.raises(InputError, match="one-logit head"):
        CrossEncoderScorer(str(tmp_path / "three"))


def test_openvino_backend_scores_as_the_torch_path(cross_encoder_dir: Path) -> None:
    """--rerank-backend openvino: the same network compiled by OpenVINO, behind our own
    tokenization and batching, scores each pair as sentence-transformers' CrossEncoder does
    (f32), with the same truncation count; in bf16 (where the CPU has it) the order holds."""
    from scipy.stats import spearmanr

    queries = [q for q in TEXTS for _ in TEXTS]
    docs = [d for _ in TEXTS for d in TEXTS]
    theirs = CrossEncoder(str(cross_encoder_dir), device="cpu").predict(
        list(zip(queries, docs, strict=True))
    )
    ov = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32", backend="openvino")
    assert ov.identity()["backend"] == "openvino"
    assert np.abs(ov.score(queries, docs) - theirs).max() < 1e-4
    torch_path = CrossEncoderScorer(str(cross_encoder_dir), precision="fp32")
    torch_path.score(queries, docs)
    assert ov.truncated == torch_path.truncated > 0
    if precision_mod.resolve_precision("auto") == "bf16":
        bf16 = CrossEncoderScorer(str(cross_encoder_dir), precision="bf16", backend="openvino")
        assert spearmanr(bf16.score(queries, docs), theirs).statistic > 0.99
    with pytest.raises(InputError, match="not one of torch, openvino"):
        CrossEncoderScorer(str(cross_encoder_dir), backend="onnx")


def test_openvino_embed_backend_embeds_as_the_torch_path() -> None:
    """--backend openvino for the embedder: our BERT body compiled by OpenVINO, pooling and
    normalisation as sentence-transformers defines them; the embeddings of texts of every
    length (one truncated) match sentence-transformers' fp32 ones."""
    theirs = SentenceTransformer(str(resolve_model("minilm").path), device="cpu").encode(TEXTS)
    ov = BiEncoder("minilm", precision="fp32", backend="openvino")
    ours = ov.encode(TEXTS)
    cosine = (ours * theirs).sum(1) / np.linalg.norm(theirs, axis=1)
    assert cosine.min() > 0.99999 and ov.truncated == 1
    assert ov.identity()["backend"] == "openvino"
    if precision_mod.resolve_precision("auto") == "bf16":
        bf16 = BiEncoder("minilm", precision="bf16", backend="openvino").encode(TEXTS)
        assert ((bf16 * theirs).sum(1) / np.linalg.norm(theirs, axis=1)).min() > 0.999

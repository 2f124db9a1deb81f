"""The CPU runtimes a user would pick instead of ours, each as a function over one chunk.

    embed_peers(folder)  -> {name: texts -> (n, dim) float32}     or {name: "why not"}
    rerank_peers(folder, max_length) -> {name: (queries, docs) -> (n,) float32} or {name: "why not"}

- ``st-fp32``, ``st-bf16``: sentence-transformers as loaded, and cast to bf16.
- ``st-openvino``: sentence-transformers' ``backend="openvino"`` (optimum-intel exports the
  folder to OpenVINO IR and compiles it with its default CPU settings).
- ``onnxruntime``: the same network exported with ``torch.onnx.export`` and run by ONNX
  Runtime with every graph optimisation, padded and pooled as sentence-transformers does.
  This stands in for sentence-transformers' ``backend="onnx"``: its optimum-onnx 0.1.0 needs
  transformers < 4.58, and sentence-transformers 6 needs transformers >= 5, so that backend
  cannot be installed with sentence-transformers 6 at all.

OpenVINO and ONNX Runtime come from ``make bench-env`` (a venv of their own, because
optimum-intel needs older transformers than ours). A peer whose package is missing is
reported with the reason instead of a figure.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

Peer = Callable[[Any], np.ndarray] | str
BATCH = 32  # sentence-transformers' default batch size, for encode and predict alike


def _st_order(texts: list[str]) -> np.ndarray:
    """sentence-transformers' order: longest text first, so each batch pads little."""
    return np.argsort([-len(t) for t in texts], kind="stable")


def embed_peers(folder: str) -> dict[str, Peer]:
    from sentence_transformers import SentenceTransformer

    peers: dict[str, Peer] = {}
    fp32 = SentenceTransformer(folder, device="cpu", local_files_only=True)
    peers["st-fp32"] = lambda texts: fp32.encode(texts, batch_size=BATCH)
    bf16 = SentenceTransformer(folder, device="cpu", local_files_only=True).to(torch.bfloat16)
    peers["st-bf16"] = lambda texts: np.asarray(
        bf16.encode(texts, batch_size=BATCH, convert_to_tensor=True).float()
    )
    try:
        ov = SentenceTransformer(folder, backend="openvino", device="cpu", local_files_only=True)
        peers["st-openvino"] = lambda texts: ov.encode(texts, batch_size=BATCH)
    except Exception as e:  # not installed, or it cannot export this folder
        peers["st-openvino"] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    peers["onnxruntime"] = _ort_embedder(fp32)
    return peers


def rerank_peers(folder: str, max_length: int) -> dict[str, Peer]:
    from sentence_transformers import CrossEncoder

    def pairs(chunk: tuple[list[str], list[str]]) -> list[tuple[str, str]]:
        return list(zip(chunk[0], chunk[1], strict=True))

    peers: dict[str, Peer] = {}
    fp32 = CrossEncoder(folder, device="cpu", local_files_only=True, max_length=max_length)
    peers["st-fp32"] = lambda c: fp32.predict(pairs(c), batch_size=BATCH)
    bf16 = CrossEncoder(folder, device="cpu", local_files_only=True, max_length=max_length)
    bf16.model.to(torch.bfloat16)
    peers["st-bf16"] = lambda c: np.asarray(
        bf16.predict(pairs(c), batch_size=BATCH, convert_to_tensor=True).float()
    )
    try:
        ov = CrossEncoder(
            folder, backend="openvino", device="cpu", local_files_only=True, max_length=max_length
        )
        peers["st-openvino"] = lambda c: ov.predict(pairs(c), batch_size=BATCH)
    except Exception as e:
        peers["st-openvino"] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
    peers["onnxruntime"] = _ort_reranker(fp32)
    return peers


NAMES = ("input_ids", "attention_mask", "token_type_ids")


class Positional(torch.nn.Module):
    """A Hugging Face network called with positional inputs, returning one output (the
    exporter traces positional arguments)."""

    def __init__(self, model: Any, output: str) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, ids: Any, mask: Any, types: Any) -> Any:
        out = self.model(input_ids=ids, attention_mask=mask, token_type_ids=types)
        return getattr(out, self.output)


def _ort_session(network: torch.nn.Module) -> Any:
    """``network`` exported to ONNX (dynamic batch and length) and opened in ONNX Runtime."""
    import onnxruntime as ort

    path = Path(tempfile.mkdtemp(prefix="peer-onnx-")) / "model.onnx"
    ids = torch.ones(2, 16, dtype=torch.long)
    mask = ids.clone()
    mask[1, 9:] = 0  # a padded row, or the exporter folds the mask away
    dynamic = {n: {0: "batch", 1: "tokens"} for n in NAMES}
    # the exporter reports progress on stdout, which is the benchmark's JSON
    with torch.inference_mode(), contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(
            network.eval(), (ids, mask, torch.zeros_like(ids)), str(path), input_names=list(NAMES),
            output_names=["out"], dynamic_axes={**dynamic, "out": {0: "batch"}},
            opset_version=18, dynamo=True,
        )  # fmt: skip
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _ort_batches(
    tokenizer: Any, limit: int, texts: list[str], pairs: list[str] | None = None
) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(rows, ONNX inputs) per batch, as sentence-transformers batches: longest first, BATCH
    texts (or pairs) each, padded to the batch's longest, cut at ``limit`` tokens."""
    order = _st_order(
        texts if pairs is None else [a + b for a, b in zip(texts, pairs, strict=True)]
    )
    for start in range(0, len(texts), BATCH):
        rows = order[start : start + BATCH]
        second = None if pairs is None else [pairs[i] for i in rows]
        enc = tokenizer(
            [texts[i] for i in rows], second, padding=True, truncation=True, max_length=limit,
            return_tensors="np",
        )  # fmt: skip
        yield rows, {n: enc[n].astype(np.int64) for n in NAMES}


def _ort_embedder(st: Any) -> Peer:
    try:
        session = _ort_session(Positional(st[0].auto_model, "last_hidden_state"))
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    def encode(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), st.get_embedding_dimension()), dtype=np.float32)
        for rows, feed in _ort_batches(st.tokenizer, st.max_seq_length, texts):
            hidden = session.run(None, feed)[0]  # (B, T, D)
            mask = feed["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1e-9)  # mean pooling
            out[rows] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
        return out

    return encode


def _ort_reranker(ce: Any) -> Peer:
    try:
        session = _ort_session(Positional(ce.model, "logits"))
    except Exception as e:
        return f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:200]}"

    def score(chunk: tuple[list[str], list[str]]) -> np.ndarray:
        queries, docs = chunk
        out = np.empty(len(queries), dtype=np.float32)
        for rows, feed in _ort_batches(ce.tokenizer, ce.max_length, queries, docs):
            logits = session.run(None, feed)[0].reshape(-1)
            out[rows] = 1 / (1 + np.exp(-logits))  # CrossEncoder's sigmoid for one logit
        return out

    return score

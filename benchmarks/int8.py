"""Static int8 (NNCF post-training quantization) against our bf16/f32 OpenVINO forward.

    python benchmarks/int8.py [--json] [--calibration 300]

Needs the ``bench`` environment (``make bench-env``: OpenVINO and NNCF). Our BERT body, as
``--backend openvino`` / ``--rerank-backend openvino`` compile it, is quantized statically:
activation ranges from ``--calibration`` SciFact texts (or query-document pairs) that are not
measured, then compiled for this CPU (int8 GEMMs on AMX-INT8 or VNNI, the rest as the
precision resolves). Measured in one process, systems alternating (``common.rotate``):

- embed:  512 SciFact documents; docs/s of our OpenVINO forward and of each int8 variant;
          mean and min cosine to sentence-transformers fp32. Gate: mean cosine >= 0.999.
- rerank: 100 SciFact test queries x 20 hybrid candidates at 256 tokens; pairs/s; Spearman
          to sentence-transformers' CrossEncoder fp32. Gate: Spearman >= 0.999.

The variants are NNCF's presets for transformers: ``mixed`` (symmetric weights, asymmetric
activations, SmoothQuant on) and ``performance`` (symmetric both). Nothing here is offered to
users unless it passes its gate and is faster than the forward it would replace.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from typing import Any

import numpy as np
from common import CACHE, emit, log, rotate
from speed import scifact_docs, scifact_index, scifact_test_queries

EMBED_GATE = 0.999
RERANK_GATE = 0.999
PRESETS = ("mixed", "performance")


def quantized(body: Any, batches: list[tuple[np.ndarray, ...]], preset: str) -> Any:
    """``body``'s network (an ``OpenVINOBody``) quantized to int8 by NNCF on ``batches`` of
    padded (input_ids, attention_mask, token_type_ids), compiled as the body was."""
    import nncf
    import openvino as ov

    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars; stdout is the result
        model = nncf.quantize(
            body.network,
            nncf.Dataset(batches, lambda b: [x.astype(np.int64) for x in b]),
            model_type=nncf.ModelType.TRANSFORMER,
            preset=getattr(nncf.QuantizationPreset, preset.upper()),
            subset_size=len(batches),
        )
    return ov.Core().compile_model(model, "CPU", body.config)


def calibration_batches(tokenize: Any, pad_id: int, *texts: list[str]) -> list[tuple[Any, ...]]:
    from searchpipe.config import TOKEN_BUDGET
    from searchpipe.models.batching import iter_batches

    packed = tokenize(*texts)
    return [
        (ids, mask, types)
        for _, (ids, types, mask) in iter_batches(packed, TOKEN_BUDGET, 256, pad_id)
    ]


def variants(body: Any, batches: list[tuple[Any, ...]], run: Any) -> dict[str, Any]:
    """A system per forward: the body as compiled, and each int8 preset; ``run`` calls the
    model whose ``body.compiled`` is the one set."""
    compiled = {"openvino": body.compiled}
    for preset in PRESETS:
        compiled[f"int8-{preset}"] = quantized(body, batches, preset)

    def system(c: Any) -> Any:
        def call(chunk: Any) -> Any:
            body.compiled = c
            return run(chunk)

        return call

    return {name: system(c) for name, c in compiled.items()}


def bench_embed(calibration: int) -> dict[str, Any]:
    from sentence_transformers import SentenceTransformer

    from searchpipe.models.biencoder import BiEncoder

    _, texts = scifact_docs()
    order = np.random.default_rng(0).permutation(len(texts))
    measured = [texts[i] for i in order[:512]]
    calib = [texts[i] for i in order[512 : 512 + calibration]]
    ours = BiEncoder("minilm", backend="openvino")
    reference = SentenceTransformer(str(ours.ref.path), device="cpu").encode(
        measured, batch_size=32, normalize_embeddings=True
    )
    batches = calibration_batches(ours.tokenize, ours.tokenizer.pad_token_id or 0, calib)
    systems = variants(ours.body, batches, ours.encode)
    chunks = [measured[i : i + 128] for i in range(0, len(measured), 128)]
    for fn in systems.values():
        fn(chunks[0])
    log(f"embed: {len(measured)} docs, {', '.join(systems)} ({ours.precision} where not int8)")
    runs = rotate(systems, chunks)
    out: dict[str, Any] = {"embed_docs": len(measured), "embed_precision": ours.precision}
    base = runs["openvino"][0]
    for name, (seconds, outputs) in runs.items():
        cos = (np.concatenate(outputs) * reference).sum(1)
        out[f"embed_{name}"] = {
            "docs_per_s": round(len(measured) / seconds, 1),
            "vs_openvino": round(base / seconds, 3),
            "cosine_mean": round(float(cos.mean()), 6),
            "cosine_min": round(float(cos.min()), 5),
            "passes_gate": bool(cos.mean() >= EMBED_GATE),
        }
    return out


def bench_rerank(calibration: int) -> dict[str, Any]:
    import pyarrow as pa
    from scipy.stats import spearmanr
    from sentence_transformers import CrossEncoder

    from searchpipe.api import Searcher
    from searchpipe.models.crossencoder import CrossEncoderScorer, make_untrained_cross_encoder

    folder = make_untrained_cross_encoder("minilm", tempfile.mkdtemp(prefix="reranker-"))
    index = scifact_index(CACHE / "home")
    queries = scifact_test_queries()
    qids, qtexts = list(queries), list(queries.values())
    hits = Searcher(index).search_batch(pa.table({"query_id": qids, "text": qtexts}), k=20)
    docs = index.texts(hits.column("doc_row").to_pylist())
    q_text = hits.column("query_text").to_pylist()
    d_text = [docs[r] for r in hits.column("doc_row").to_pylist()]
    measured = (q_text[:2000], d_text[:2000])  # the first 100 queries' 20 candidates
    calib = (q_text[2000 : 2000 + calibration], d_text[2000 : 2000 + calibration])
    ours = CrossEncoderScorer(folder, max_length=256, device="cpu", backend="openvino")
    reference = CrossEncoder(folder, device="cpu", max_length=256).predict(
        list(zip(*measured, strict=True)), batch_size=32
    )
    batches = calibration_batches(ours.tokenize, ours.tokenizer.pad_token_id or 0, *calib)
    systems = variants(ours.body, batches, lambda c: ours.score(*c))
    chunks = [(measured[0][i : i + 200], measured[1][i : i + 200]) for i in range(0, 2000, 200)]
    for fn in systems.values():
        fn(chunks[0])
    log(f"rerank: 2000 pairs at 256 tokens, {', '.join(systems)}")
    runs = rotate(systems, chunks)
    out: dict[str, Any] = {"rerank_pairs": 2000, "rerank_precision": ours.precision}
    base = runs["openvino"][0]
    for name, (seconds, outputs) in runs.items():
        rho = float(spearmanr(np.concatenate(outputs), reference).statistic)
        out[f"rerank_{name}"] = {
            "pairs_per_s": round(2000 / seconds, 1),
            "vs_openvino": round(base / seconds, 3),
            "spearman": round(rho, 6),
            "passes_gate": bool(rho >= RERANK_GATE),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--calibration", type=int, default=300, help="texts or pairs")
    parser.add_argument("--parts", default="embed,rerank")
    args = parser.parse_args()
    from searchpipe.models.precision import cpu_kernels

    result: dict[str, Any] = {"kernels": cpu_kernels(), "calibration": args.calibration}
    parts = set(args.parts.split(","))
    if "embed" in parts:
        result.update(bench_embed(args.calibration))
    if "rerank" in parts:
        result.update(bench_rerank(args.calibration))
    emit(result, args.json)


if __name__ == "__main__":
    main()

"""The cross-encoder: a sentence-transformers CrossEncoder folder run on our fast path.

Same treatment as the bi-encoder: pairs tokenized once, length-sorted token-budget batches,
bf16 weights where native, a BERT network run as our fused encoder (``models.inference``),
``torch.inference_mode``; or the forward compiled by OpenVINO (``backend="openvino"``,
``models.openvino``). Pairs longer than the model's maximum length are truncated
(longest side first, as sentence-transformers does) and counted in ``truncated``, so
callers can report it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from searchpipe.config import TOKEN_BUDGET
from searchpipe.errors import InputError, RunError
from searchpipe.models.batching import Packed, iter_batches
from searchpipe.models.biencoder import quiet_transformers
from searchpipe.models.inference import transformer_body
from searchpipe.models.openvino import BACKENDS
from searchpipe.models.precision import compute_dtype, resolve_device, resolve_precision
from searchpipe.models.resolve import ModelRef, resolve_model
from searchpipe.timing import timed

#: in a reranker folder we trained: how to use it, as measured on its dev slice
USAGE_FILE = "searchpipe_rerank.json"


def rerank_usage(folder: str | Path) -> dict[str, Any] | None:
    """The usage a reranker folder records (``rerank``, ``depth``, ``blend``, ``max_length`` and
    the dev figures they were chosen by), or None for a folder that records none.

    >>> rerank_usage("models/reranker")  # doctest: +SKIP
    {'rerank': True, 'depth': 20, 'blend': 1.0, 'max_length': 256, ...}
    """
    path = Path(folder) / USAGE_FILE
    if not path.is_file():
        return None
    try:
        usage = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise InputError(
            f"{path} cannot be read ({e}); retrain the reranker or delete the file"
        ) from None
    if not isinstance(usage, dict) or not isinstance(usage.get("rerank"), bool):
        raise InputError(f"{path} is not a reranker usage record (no 'rerank': true/false)")
    return usage


class CrossEncoderScorer:
    """Score (query, document) pairs with a CrossEncoder model folder.

    >>> scorer = CrossEncoderScorer("path/to/cross-encoder")  # doctest: +SKIP
    >>> scorer.score(["what is a bat?"], ["Bats are flying mammals."])  # doctest: +SKIP
    array([0.93], dtype=float32)
    """

    def __init__(
        self,
        model: str | ModelRef,
        precision: str = "auto",
        token_budget: int = TOKEN_BUDGET,
        batch_size: int = 256,
        max_length: int | None = None,
        device: str = "auto",
        backend: str = "torch",
    ) -> None:
        from sentence_transformers import CrossEncoder

        if backend not in BACKENDS:
            raise InputError(f"rerank backend {backend!r} is not one of {', '.join(BACKENDS)}")

        quiet_transformers()
        self.ref = model if isinstance(model, ModelRef) else resolve_model(model)
        device = resolve_device(device)
        try:
            ce = CrossEncoder(str(self.ref.path), device=device, local_files_only=True)
        except Exception as e:
            raise InputError(
                f"rerank model {self.ref.path} could not be loaded as a sentence-transformers "
                f"CrossEncoder ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            ) from None
        if ce.num_labels != 1:
            raise InputError(
                f"rerank model {self.ref.path} has {ce.num_labels} output labels; "
                "a reranker needs a one-logit head (num_labels=1)"
            )
        ce.eval()
        self.device = device
        self.precision = resolve_precision(precision, device)
        # as in BiEncoder: bf16 weights are faster than autocast, with the same ranking
        dtype = compute_dtype(self.precision)
        self.token_budget = token_budget
        self.batch_size = batch_size
        self.tokenizer = ce.tokenizer
        # the length the model was saved with (a reranker we train records the length it was
        # trained at) is the default; an explicit max_length may go up to what the position
        # embeddings hold, even above the saved tokenizer's model_max_length
        positions = int(getattr(ce.model.config, "max_position_embeddings", 512) or 512)
        saved = ce.max_seq_length or self.tokenizer.model_max_length or positions
        if max_length is not None and max_length > positions:
            raise InputError(
                f"rerank max length {max_length} is longer than model {self.ref.name}'s "
                f"{positions} position embeddings; pass at most {positions}"
            )
        self.max_length = max_length or min(saved, positions)
        self.truncated = 0
        self.pair_tokenizer = pair_tokenizer(self.tokenizer, self.max_length)
        self.activation = ce.activation_fn
        self.backend = backend
        self.body: Any = None
        if backend == "openvino":
            if device != "cpu" or len(ce) != 1:
                raise InputError(
                    f"rerank backend 'openvino' runs a lone transformer network on the CPU "
                    f"(here: device {device}, {len(ce)} modules); use --rerank-backend torch"
                )
            from searchpipe.models.openvino import OpenVINOBody

            self.body = OpenVINOBody(ce.model, self.precision)
        elif len(ce) == 1:  # only a lone Transformer module: anything after it would be skipped
            self.body = transformer_body(ce, dtype, device, token_budget)
        self.model = None if self.body is not None else ce.to(dtype)

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.ref.name,
            "weights_sha256": self.ref.weights_sha256,
            "max_length": self.max_length,
            **({"backend": self.backend} if self.backend != "torch" else {}),
        }

    def tokenize(self, queries: list[str], docs: list[str]) -> Packed:
        """The pairs' token ids, each cut to ``max_length`` (longest side first); the cut
        ones are counted in ``truncated``."""
        if self.pair_tokenizer is not None:
            # one pass: the Rust tokenizer truncates and says which pairs it cut
            encodings = self.pair_tokenizer.encode_batch(list(zip(queries, docs, strict=True)))
            self.truncated += sum(1 for e in encodings if e.overflowing)
            return Packed.from_encoding([e.ids for e in encodings], [e.type_ids for e in encodings])
        enc = self.tokenizer(queries, docs, truncation=False, return_attention_mask=False)
        ids, types = enc["input_ids"], enc.get("token_type_ids")
        over = [i for i, row in enumerate(ids) if len(row) > self.max_length]
        if over:
            self.truncated += len(over)
            cut = self.tokenizer(
                [queries[i] for i in over],
                [docs[i] for i in over],
                truncation="longest_first",
                max_length=self.max_length,
                return_attention_mask=False,
            )
            for j, i in enumerate(over):
                ids[i] = cut["input_ids"][j]
                if types is not None:
                    types[i] = cut["token_type_ids"][j]
        return Packed.from_encoding(ids, types)

    def score(self, queries: list[str], docs: list[str]) -> np.ndarray:
        """One float32 score per (query, doc) pair, in input order."""
        import torch

        out = np.empty(len(queries), dtype=np.float32)
        if not queries:
            return out
        packed = self.tokenize(queries, docs)
        pad_id = self.tokenizer.pad_token_id or 0
        with torch.inference_mode():
            for rows, (ids, types, mask) in iter_batches(
                packed, self.token_budget, self.batch_size, pad_id
            ):
                features = {
                    "input_ids": torch.from_numpy(ids).to(self.device),
                    "token_type_ids": torch.from_numpy(types).to(self.device),
                    "attention_mask": torch.from_numpy(mask).to(self.device),
                }
                try:
                    with timed("rerank_forward"):
                        logits = self._forward(features).float()
                except RuntimeError as e:
                    raise RunError(f"reranking failed: {str(e).splitlines()[0]}") from None
                if self.activation is not None:
                    logits = self.activation(logits)
                out[rows] = logits.reshape(-1).cpu().numpy()
        return out

    def _forward(self, features: dict[str, Any]) -> Any:
        """Logits (B, 1) of one padded batch."""
        if self.body is None:
            assert self.model is not None
            return self.model(features)["scores"]
        return self.body.logits(
            features["input_ids"], features["attention_mask"], features["token_type_ids"]
        )


def pair_tokenizer(tokenizer: Any, max_length: int) -> Any:
    """A copy of a fast tokenizer's Rust tokenizer that truncates pairs to ``max_length``
    (longest side first, as sentence-transformers' CrossEncoder asks for) and pads nothing,
    or None for a tokenizer without one.

    Tokenizing whole pairs and then the too-long ones again with truncation took twice as
    long: 16.8 ms against 8.9 ms for 20 SciFact pairs at 256 tokens, on a query that reranks
    20 hits in about 100 ms.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    from tokenizers import Tokenizer

    own = Tokenizer.from_str(backend.to_str())
    own.no_padding()
    own.enable_truncation(max_length, strategy="longest_first")
    return own


def make_untrained_cross_encoder(base: str, output: str, seed: int = 0) -> str:
    """Save ``base``'s BERT body with a fresh one-logit head as a CrossEncoder folder.

    Useful for tests and as the starting point of reranker training.
    """
    import torch
    from sentence_transformers import CrossEncoder

    quiet_transformers()
    torch.manual_seed(seed)
    ref = resolve_model(base)
    model = CrossEncoder(str(ref.path), num_labels=1, device="cpu", local_files_only=True)
    model.save(output)
    return output

"""The bi-encoder: a sentence-transformers model run on our fast path.

The model folder (and its pooling and normalisation) is whatever sentence-transformers
loads; we replace the loop around it and, for BERT models, the network itself: one tokenizer
call per record batch, token-budget batches sorted by length, bf16 weights where the CPU has
native bf16, our encoder with fused kernels (``models.inference``), ``torch.inference_mode``.
Pooling runs in fp32 on the body's output. The result is float32 NumPy, ready for FAISS.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from searchpipe.config import TOKEN_BUDGET
from searchpipe.errors import InputError, RunError
from searchpipe.models.batching import Packed, iter_batches
from searchpipe.models.inference import transformer_body
from searchpipe.models.openvino import BACKENDS
from searchpipe.models.precision import compute_dtype, resolve_device, resolve_precision
from searchpipe.models.resolve import ModelRef, resolve_model
from searchpipe.timing import timed

log = logging.getLogger(__name__)


def quiet_transformers() -> None:
    """Silence library chatter that is not ours to show (warnings stay on stderr only).

    ``TOKENIZERS_PARALLELISM`` is left as the user has it (on by default): tokenizing a
    query's 20 rerank pairs on both cores takes 5.3 ms instead of 9.9 on the 2-core dev box,
    and nothing in searchpipe forks after tokenizing."""
    for name in ("sentence_transformers", "transformers", "huggingface_hub"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="transformers")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass


class BiEncoder:
    """Embed texts with a sentence-transformers model folder.

    >>> enc = BiEncoder("minilm")
    >>> enc.encode(["a cat", "a dog"]).shape
    (2, 384)
    """

    def __init__(
        self,
        model: str | ModelRef = "minilm",
        precision: str = "auto",
        token_budget: int = TOKEN_BUDGET,
        batch_size: int = 256,
        max_length: int | None = None,
        device: str = "auto",
        backend: str = "torch",
    ) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        if backend not in BACKENDS:
            raise InputError(f"embed backend {backend!r} is not one of {', '.join(BACKENDS)}")

        quiet_transformers()
        self.ref = model if isinstance(model, ModelRef) else resolve_model(model)
        device = resolve_device(device)
        try:
            st = SentenceTransformer(str(self.ref.path), device=device, local_files_only=True)
        except Exception as e:  # a folder that is not a model
            raise InputError(
                f"model folder {self.ref.path} could not be loaded as a sentence-transformers or "
                f"Hugging Face model ({type(e).__name__}: {str(e).splitlines()[0][:160]})"
            ) from None
        st.eval()
        self.device = device
        self.precision = resolve_precision(precision, device)
        # bf16 weights outright: autocast re-casts activations around every op and measured
        # slower for the same quality (mean cosine to fp32 0.99995 on SciFact)
        dtype = compute_dtype(self.precision)
        self.token_budget = token_budget
        self.batch_size = batch_size
        tokenizer = st.tokenizer
        if tokenizer is None:
            raise InputError(f"model folder {self.ref.path} has no tokenizer files")
        self.tokenizer = tokenizer
        limit = st.max_seq_length or tokenizer.model_max_length or 512
        self.max_length = min(max_length or limit, limit)
        self.dim = int(st.get_embedding_dimension() or 0)
        self.normalize = any(type(m).__name__ == "Normalize" for m in st)
        self.pooling = self._pooling_mode(st)
        self.truncated = 0  # texts cut at max_length so far
        # a BERT body runs as our fused encoder and the modules after it (pooling,
        # normalisation, dense) as sentence-transformers defines them; others run as loaded
        self.backend = backend
        self.body: Any = transformer_body(st, dtype, device, token_budget)
        if backend == "openvino":
            if device != "cpu" or self.body is None:
                raise InputError(
                    f"embed backend 'openvino' runs a BERT body on the CPU (here: device "
                    f"{device}, {type(st[0]).__name__}); use --backend torch"
                )
            from searchpipe.models.openvino import OpenVINOBody

            self.body = OpenVINOBody(st[0].auto_model, self.precision, "embedder")
        self.head = torch.nn.Sequential(*list(st)[1:]) if self.body is not None else None
        self.model = None if self.body is not None else st.to(dtype)
        torch.set_num_threads(max(torch.get_num_threads(), 1))

    @staticmethod
    def _pooling_mode(model: Any) -> str:
        for module in model:
            if type(module).__name__ == "Pooling":
                return str(getattr(module, "pooling_mode", "unknown"))
        return "none"

    def identity(self) -> dict[str, Any]:
        """What an index records about its encoder, and checks when queried."""
        return {
            "name": self.ref.name,
            "weights_sha256": self.ref.weights_sha256,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "dim": self.dim,
            "max_length": self.max_length,
            **({"backend": self.backend} if self.backend != "torch" else {}),
        }

    def tokenize(self, texts: list[str]) -> Packed:
        enc = self.tokenizer(
            texts,
            truncation=False,
            add_special_tokens=True,
            return_attention_mask=False,
            return_token_type_ids=False,
        )["input_ids"]
        #: token count of each text of the last call, before truncation
        self.last_lengths = np.fromiter((len(ids) for ids in enc), dtype=np.int32, count=len(enc))
        over = [i for i, ids in enumerate(enc) if len(ids) > self.max_length]
        self.truncated += len(over)
        for i in over:  # keep [CLS] ... and the closing [SEP]
            enc[i] = enc[i][: self.max_length - 1] + enc[i][-1:]
        return Packed.from_encoding(enc, None)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embeddings of ``texts`` as a float32 array (n, dim), in input order."""
        import torch

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        packed = self.tokenize(texts)
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
                    with timed("embed_forward"):
                        emb = self._forward(features)
                except RuntimeError as e:
                    raise RunError(f"embedding failed: {str(e).splitlines()[0]}") from None
                out[rows] = emb.float().cpu().numpy()
        if self.body is None and self.normalize and self.precision != "fp32":
            # normalised in bf16 by the module: unit length again in fp32, for inner product
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out

    def _forward(self, features: dict[str, Any]) -> Any:
        """Sentence embeddings (B, dim) of one padded batch."""
        if self.body is None:
            assert self.model is not None
            return self.model(features)["sentence_embedding"]
        assert self.head is not None
        hidden = self.body(
            features["input_ids"], features["attention_mask"], features["token_type_ids"]
        )
        features["token_embeddings"] = hidden.float()
        return self.head(features)["sentence_embedding"]

"""OpenVINO as an optional engine for a model's forward (``backend: openvino`` for the
embedder, ``rerank_backend: openvino`` for the reranker).

The model folder's network, loaded into our own BERT (``models.encoder``, fp32), is converted
by ``openvino.convert_model`` with a dynamic batch and length and compiled for this CPU: bf16
inference where the precision resolved to bf16 (AMX or AVX512-BF16), f32 otherwise, on as
many threads as torch uses. Only the forward changes: tokenization, length-sorted token-budget
batches, truncation counts, pooling and the output order stay ``models.biencoder``'s and
``models.crossencoder``'s.

Why offer it: on the AMD EPYC (AVX512-BF16, no AMX) dev machine sentence-transformers'
OpenVINO backend embedded 1.2x and reranked 1.15x faster than our fused path
(``benchmarks/speed.py``); ``pip install 'searchpipe[openvino]'``.
"""

from __future__ import annotations

from typing import Any

from searchpipe.errors import InputError, RunError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: engines of a model's forward: our fused path (or the model's own torch network), or OpenVINO
BACKENDS = ("torch", "openvino")


class OpenVINOBody:
    """``network`` (a transformers BERT model or BERT sequence classifier) compiled by
    OpenVINO; called like our encoder, it returns what our BERT returns: hidden states
    (B, T, D) for a body, logits (B, num_labels) for a classifier.

    >>> body = OpenVINOBody(cross_encoder.model, "bf16")  # doctest: +SKIP
    >>> body.logits(input_ids, attention_mask, token_type_ids).shape  # doctest: +SKIP
    torch.Size([8, 1])
    """

    def __init__(self, network: Any, precision: str, what: str = "reranker") -> None:
        import torch

        try:
            import openvino as ov
        except ImportError:
            raise InputError(
                f"backend 'openvino' for the {what} needs OpenVINO: pip install "
                "'searchpipe[openvino]' (or use the torch backend)"
            ) from None

        from searchpipe.models.bert_io import from_transformers

        # our own BERT (models.encoder), not the transformers class: it traces the same way
        # under every transformers version (5.5's mask helpers do not trace)
        kind = (
            "classifier"
            if type(network).__name__.endswith("ForSequenceClassification")
            else "encoder"
        )
        ours = from_transformers(network, kind).float().eval()
        ids, mask, types = (torch.ones((2, 16), dtype=torch.int64) for _ in INPUTS)
        mask[1, 10:] = 0  # padding, so that the trace keeps the masked attention path
        try:
            with torch.no_grad():
                converted = ov.convert_model(ours, example_input=(ids, mask, types))
        except Exception as e:  # the converter raises many kinds
            raise RunError(
                f"OpenVINO could not convert the {what} ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160]}); use the torch backend"
            ) from None
        #: the converted network and how it is compiled (``benchmarks/int8.py`` quantizes it)
        self.network = converted
        self.config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        self.compiled = ov.Core().compile_model(converted, "CPU", self.config)
        self.precision = precision

    def __call__(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        """The network's output for one padded batch of int64 tensors, as a float32 tensor."""
        import torch

        feed = [input_ids.numpy(), attention_mask.numpy(), token_type_ids.numpy()]  # INPUTS order
        return torch.from_numpy(self.compiled(feed)[0].copy())

    logits = __call__  # the cross-encoder's name for it

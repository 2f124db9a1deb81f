"""OpenVINO as an optional engine for a cross-encoder's forward (``rerank_backend: openvino``).

The model folder's network, loaded into our own BERT (``models.encoder``, fp32), is converted
by ``openvino.convert_model`` with a dynamic batch and length and compiled for this CPU: bf16
inference where the precision resolved to bf16 (AMX or AVX512-BF16), f32 otherwise, on as
many threads as torch uses. Only the forward changes: tokenization, length-sorted token-budget
batches, truncation counts and the score order stay ``models.crossencoder``'s.

Why offer it: on the AMD EPYC (AVX512-BF16, no AMX) dev machine sentence-transformers'
OpenVINO backend reranked 256-token pairs 1.15x faster than our fused path
(``benchmarks/speed.py``); ``pip install 'searchpipe[openvino]'``.
"""

from __future__ import annotations

from typing import Any

from searchpipe.errors import InputError, RunError

INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OpenVINOBody:
    """``network`` (a transformers sequence-classification model) compiled by OpenVINO.

    >>> body = OpenVINOBody(cross_encoder.model, "bf16")  # doctest: +SKIP
    >>> body.logits(input_ids, attention_mask, token_type_ids).shape  # doctest: +SKIP
    torch.Size([8, 1])
    """

    def __init__(self, network: Any, precision: str) -> None:
        import torch

        try:
            import openvino as ov
        except ImportError:
            raise InputError(
                "rerank backend 'openvino' needs OpenVINO: pip install 'searchpipe[openvino]' "
                "(or use --rerank-backend torch)"
            ) from None

        from searchpipe.models.bert_io import from_transformers

        # our own BERT (models.encoder), not the transformers class: it traces the same way
        # under every transformers version (5.5's mask helpers do not trace)
        classifier = from_transformers(network, "classifier").float().eval()
        ids, mask, types = (torch.ones((2, 16), dtype=torch.int64) for _ in INPUTS)
        mask[1, 10:] = 0  # padding, so that the trace keeps the masked attention path
        example = (ids, mask, types)
        try:
            with torch.no_grad():
                converted = ov.convert_model(classifier, example_input=example)
        except Exception as e:  # the converter raises many kinds
            raise RunError(
                f"OpenVINO could not convert the reranker ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:160]}); use --rerank-backend torch"
            ) from None
        config = {
            "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
            "INFERENCE_NUM_THREADS": torch.get_num_threads(),
        }
        self.compiled = ov.Core().compile_model(converted, "CPU", config)
        self.precision = precision

    def logits(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
        """Logits (B, 1) of one padded batch of int64 tensors, as a float32 tensor."""
        import torch

        feed = [input_ids.numpy(), attention_mask.numpy(), token_type_ids.numpy()]  # INPUTS order
        return torch.from_numpy(self.compiled(feed)[0].copy())

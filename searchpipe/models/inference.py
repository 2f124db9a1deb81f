"""Our encoder run for inference: the same function as ``encoder.Block``, fewer passes over memory.

The bi-encoder and the cross-encoder load their folders with sentence-transformers, which keeps
its meaning of tokenizer, pooling, normalisation and score activation. When the network inside
is BERT, we swap it for this module: the weights move exactly into our ``TransformerEncoder``
(``bert_io.from_transformers``) and run here. Per layer, on CPU:

- one GEMM for query/key/value (our fused ``qkv``), attention read straight from it by our
  AVX-512 kernel where that is the faster (``models.kernels``), else PyTorch's flash kernel;
- the attention output projection with the residual add fused into the GEMM (oneDNN post-op);
- the intermediate projection with exact (erf) GELU fused into the GEMM;
- the output projection with its residual add fused, then LayerNorm (ours where our attention
  runs, else PyTorch's).

Weights are converted to the compute dtype and prepacked once into oneDNN's blocked layout.
GELU and residual adds ride along while the GEMM output is still in cache, instead of three
more trips through a (B, T, 4D) tensor. Where oneDNN is missing (or on GPU) the same function
runs on plain ``F.linear``. ``tests/test_inference.py`` holds it to our encoder in fp32 and
to ``transformers.BertModel`` through the full bi-encoder.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from searchpipe.config import TOKEN_BUDGET
from searchpipe.errors import InputError, RunError
from searchpipe.models import kernels
from searchpipe.models.encoder import (
    Block,
    SequenceClassifier,
    TransformerEncoder,
    padding_mask,
)

log = logging.getLogger(__name__)


def onednn_available(device: str = "cpu") -> bool:
    """True when fused oneDNN linear kernels can run (CPU builds of PyTorch with mkldnn)."""
    return (
        device == "cpu"
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


class FusedLinear:
    """A linear layer with prepacked weights and optional fused GELU or residual add."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype, fused: bool, rows_hint: int) -> None:
        weight = linear.weight.detach().to(dtype)
        self.bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        self.fused = fused
        # the packed layout is tuned for ``rows_hint`` rows (B*T); any other count is still exact
        self.weight = (
            torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint) if fused else weight
        )

    def __call__(
        self, x: torch.Tensor, activation: Literal["none", "gelu"] = "none"
    ) -> torch.Tensor:
        if self.fused:  # algorithm "none" is GELU's exact erf form, as BERT's "gelu"
            algorithm = "none" if activation == "gelu" else ""
            return torch.ops.mkldnn._linear_pointwise.default(
                x, self.weight, self.bias, activation, [], algorithm
            )
        y = F.linear(x, self.weight, self.bias)
        return F.gelu(y) if activation == "gelu" else y

    def add(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """``linear(x) + residual``."""
        if self.fused:
            # the overload by name: resolving it from the arguments formats them (ms per call)
            return torch.ops.mkldnn._linear_pointwise.binary(
                x, residual, self.weight, self.bias, "add"
            )
        return F.linear(x, self.weight, self.bias) + residual


Norm = Callable[[torch.Tensor], torch.Tensor]  # nn.LayerNorm, or kernels.LayerNorm over it


class Layer(NamedTuple):
    """One encoder block's parts, as the fused forward uses them."""

    qkv: FusedLinear
    dense: FusedLinear
    attention_norm: Norm
    intermediate: FusedLinear
    output: FusedLinear
    output_norm: Norm

    @classmethod
    def of(
        cls, block: Block, dtype: torch.dtype, fused: bool, rows_hint: int, our_norm: bool
    ) -> Layer:
        def linear(lin: nn.Linear) -> FusedLinear:
            return FusedLinear(lin, dtype, fused, rows_hint)

        def norm(ln: nn.LayerNorm) -> Norm:
            return kernels.LayerNorm(ln) if our_norm else ln

        return cls(
            linear(block.attention.qkv),
            linear(block.attention.dense),
            norm(block.attention_norm),
            linear(block.feed_forward.intermediate),
            linear(block.feed_forward.output),
            norm(block.output_norm),
        )


class InferenceEncoder:
    """Eval-only form of a ``TransformerEncoder`` (and optional classifier) in ``dtype``.

    >>> from searchpipe.models.bert_io import load_encoder
    >>> fast = InferenceEncoder(load_encoder("minilm"), torch.float32)
    >>> fast(torch.tensor([[101, 7592, 102]])).shape
    torch.Size([1, 3, 384])
    """

    def __init__(
        self,
        encoder: TransformerEncoder,
        dtype: torch.dtype = torch.float32,
        classifier: nn.Linear | None = None,
        device: str = "cpu",
        rows_hint: int = TOKEN_BUDGET,
    ) -> None:
        encoder = encoder.eval().to(device=device, dtype=dtype)
        fused = onednn_available(device)
        self.config = encoder.config
        self.embeddings = encoder.embeddings
        self.pooler = encoder.pooler
        self.classifier = None if classifier is None else classifier.eval().to(device, dtype)
        heads, d_model = self.config.n_heads, self.config.d_model
        #: "ours" (our attention and LayerNorm, where they run and measured faster here) or
        #: "torch" (PyTorch's SDPA and LayerNorm)
        self.kernels = kernels.choose(dtype, heads, d_model // heads, device)
        ours = self.kernels == "ours"
        self.layers = [
            Layer.of(cast(Block, block), dtype, fused, rows_hint, ours) for block in encoder.layers
        ]

    @torch.inference_mode()
    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        first_only: bool = False,
    ) -> torch.Tensor:
        """Last hidden states (B, T, D), as ``TransformerEncoder.forward``.

        ``first_only``: (B, 1, D), the first ([CLS]) position only, which is all a classifier
        reads. The last layer then runs attention, its projections and the feed-forward for
        that one position (its keys and values still come from every position): the same
        numbers for a sixth less work in a 6-layer model.
        """
        B, T = input_ids.shape
        H = self.config.n_heads
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        D = x.shape[-1]
        mask = padding_mask(attention_mask)
        lengths = prefix_lengths(attention_mask, B, T) if self.kernels == "ours" else None
        last = len(self.layers) - 1
        for n, layer in enumerate(self.layers):
            qkv = layer.qkv(x).view(B, T, 3, H, D // H)  # (B, T, 3, H, Dh)
            if first_only and n == last:
                y = kernels.sdpa_first(qkv, mask)  # (B, 1, D)
                x = x[:, :1].contiguous()  # (B, 1, D)
            elif lengths is not None:
                y = kernels.attention(qkv, lengths)  # (B, T, D)
            else:
                y = kernels.sdpa(qkv, mask)  # (B, T, D)
            x = layer.attention_norm(layer.dense.add(y, x))  # (B, T, D)
            x = layer.output_norm(layer.output.add(layer.intermediate(x, "gelu"), x))
        return x

    @torch.inference_mode()
    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Classifier logits (B, num_labels), as ``SequenceClassifier.forward``."""
        if self.classifier is None:
            raise RunError("this encoder was built without a classification head")
        hidden = self(input_ids, attention_mask, token_type_ids, first_only=True)  # (B, 1, D)
        return self.classifier(self.pooler(hidden))


def prefix_lengths(attention_mask: torch.Tensor | None, B: int, T: int) -> torch.Tensor | None:
    """Real tokens per row (B,) when every row is real tokens then padding (as our tokenizers
    pad), else None: the attention kernel masks by length, not by an arbitrary mask."""
    if attention_mask is None:
        return torch.full((B,), T, dtype=torch.int64)
    lengths = attention_mask.sum(1, dtype=torch.int64)  # (B,)
    prefix = torch.arange(T, device=attention_mask.device)[None, :] < lengths[:, None]
    return lengths if torch.equal(prefix, attention_mask.bool()) else None


def transformer_body(
    model: Any, dtype: torch.dtype, device: str = "cpu", rows_hint: int = TOKEN_BUDGET
) -> InferenceEncoder | None:
    """Our inference encoder for the network in a sentence-transformers model's first module.

    None unless that module is a ``Transformer`` wrapping a BERT we run (``for_transformers``).
    """
    first = model[0]
    if type(first).__name__ != "Transformer" or not hasattr(first, "auto_model"):
        return None
    return for_transformers(first.auto_model, dtype, device, rows_hint)


def for_transformers(
    hf_model: Any, dtype: torch.dtype, device: str = "cpu", rows_hint: int = TOKEN_BUDGET
) -> InferenceEncoder | None:
    """Our inference encoder for a ``transformers`` BERT model, or None if it is not one we run.

    ``BertModel`` gives the body; ``BertForSequenceClassification`` the body and its classifier.
    """
    from searchpipe.models.bert_io import from_transformers

    kind = _KINDS.get(type(hf_model).__name__)
    if kind is None:
        log.info("running %s through transformers (not a BERT we run)", type(hf_model).__name__)
        return None
    try:
        ours = from_transformers(hf_model, kind)
    except (InputError, RunError) as e:
        log.info("running %s through transformers: %s", type(hf_model).__name__, e)
        return None
    if isinstance(ours, SequenceClassifier):
        return InferenceEncoder(ours.encoder, dtype, ours.classifier, device, rows_hint)
    assert isinstance(ours, TransformerEncoder)
    return InferenceEncoder(ours, dtype, None, device, rows_hint)


# transformers class -> what we build from it (other classes run through transformers)
_KINDS = {"BertModel": "encoder", "BertForSequenceClassification": "classifier"}

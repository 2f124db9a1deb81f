"""Our transformer encoder: BERT, in one file, top to bottom.

Order follows the architecture: config -> embeddings -> self-attention -> feed-forward ->
block -> encoder stack (+ pooler) -> heads (MLM, NSP, sequence classification) -> the
pretraining wrapper. Parts carry BERT's names so Hugging Face weights map onto ours with the
short name table in ``bert_io``. Differences from
``transformers.BertModel`` are engineering only, and the outputs match it:

- one fused query/key/value projection (``qkv``) instead of three (one GEMM instead of
  three; ``bert_io`` concatenates / splits the weights exactly);
- attention through ``F.scaled_dot_product_attention`` with a boolean padding mask (or no
  mask at all when nothing is padded, which lets PyTorch pick its fastest kernel);
- the MLM head runs only on the positions that carry a label: predicting the vocabulary at
  every position costs as much as the whole encoder for a small model, and is thrown away.

Shapes: B batch, T tokens, D d_model, H heads, V vocabulary, M masked positions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class EncoderConfig:
    """Sizes of a BERT-style encoder (defaults: all-MiniLM-L6-v2).

    >>> EncoderConfig(d_model=128, n_layers=2, n_heads=2, d_ff=512).head_dim
    64
    """

    vocab_size: int = 30522
    d_model: int = 384
    n_layers: int = 6
    n_heads: int = 12
    d_ff: int = 1536
    max_len: int = 512
    type_vocab_size: int = 2
    dropout: float = 0.1
    position: Literal["learned", "sinusoidal"] = "learned"
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                "pick n_heads that divides d_model"
            )
        if self.position not in ("learned", "sinusoidal"):
            raise ValueError(f"position={self.position!r}; expected 'learned' or 'sinusoidal'")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The fixed position table of "Attention is all you need": (max_len, d_model)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]  # (T, 1)
    inv = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(1e4) / d_model))
    table = torch.zeros(max_len, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * inv)
    table[:, 1::2] = torch.cos(pos * inv[: d_model // 2])
    return table.float()


class Embeddings(nn.Module):
    """token + position + segment embeddings, then LayerNorm and dropout."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        d = config.d_model
        self.learned = config.position == "learned"
        self.word_embeddings = nn.Embedding(config.vocab_size, d, padding_idx=config.pad_token_id)
        if self.learned:
            self.position_embeddings = nn.Embedding(config.max_len, d)
        else:
            # a buffer, not a parameter: it is never trained, and not saved (it is recomputed)
            self.register_buffer(
                "position_table", sinusoidal_table(config.max_len, d), persistent=False
            )
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, d)
        self.LayerNorm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.dropout)

    def position_weight(self) -> torch.Tensor:
        """The (max_len, D) position table, learned or fixed."""
        if self.learned:
            return self.position_embeddings.weight
        return self.get_buffer("position_table")

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        T = input_ids.shape[1]
        x = self.word_embeddings(input_ids)  # (B, T, D)
        x = x + self.token_type_embeddings(token_type_ids)  # (B, T, D)
        x = x + self.position_weight()[:T]  # (B, T, D); BERT's summation order, for parity
        return self.dropout(self.LayerNorm(x))


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)  # rows: query | key | value
        self.dense = nn.Linear(config.d_model, config.d_model)  # BERT: attention.output.dense
        self.attn_dropout = config.dropout
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, D // self.n_heads)  # (B, T, 3, H, Dh)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, H, T, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, H, T, Dh)
        y = y.transpose(1, 2).reshape(B, T, D)  # (B, T, D)
        return self.dropout(self.dense(y))


class FeedForward(nn.Module):
    """Position-wise feed-forward: D -> d_ff -> D with exact (erf) GELU, as BERT."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.intermediate = nn.Linear(config.d_model, config.d_ff)
        self.output = nn.Linear(config.d_ff, config.d_model)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output(F.gelu(self.intermediate(x))))  # (B, T, D)


class Block(nn.Module):
    """One encoder layer, post-LN like BERT: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.feed_forward = FeedForward(config)
        self.output_norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, mask))  # (B, T, D)
        return self.output_norm(x + self.feed_forward(x))  # (B, T, D)


class Pooler(nn.Module):
    """BERT's pooler: tanh(W h_[CLS] + b), the input of the NSP and classification heads."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden[:, 0]))  # (B, D)


class TransformerEncoder(nn.Module):
    """The encoder stack: embeddings, ``n_layers`` blocks and the pooler.

    >>> enc = TransformerEncoder(EncoderConfig(vocab_size=100, d_model=32, n_layers=2,
    ...                                        n_heads=2, d_ff=64, max_len=16))
    >>> enc(torch.tensor([[2, 7, 9, 3]])).shape
    torch.Size([1, 4, 32])
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.pooler = Pooler(config)
        self.apply(init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Last hidden states (B, T, D); ``attention_mask`` is 1 for real tokens, 0 for padding."""
        B, T = input_ids.shape
        if T > self.config.max_len:
            raise ValueError(
                f"sequence of {T} tokens is longer than max_len={self.config.max_len}; "
                "truncate the input"
            )
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, D)
        mask = padding_mask(attention_mask)
        for block in self.layers:
            x = block(x, mask)
        return x

    def pool(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.pooler(hidden)  # (B, D)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B, T) 1/0 mask -> (B, 1, 1, T) boolean "may attend" mask, or None when nothing is padded.

    None lets SDPA use its fused kernel without a mask; a boolean mask broadcasts over heads
    and queries instead of materialising (B, H, T, T).
    """
    if attention_mask is None or bool(attention_mask.all()):
        return None
    return attention_mask.bool()[:, None, None, :]


def init_weights(module: nn.Module) -> None:
    """BERT's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MLMTransform(nn.Module):
    """dense -> GELU -> LayerNorm before the vocabulary projection (BERT's 'transform')."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.d_model)
        self.LayerNorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(h)))


class MLMHead(nn.Module):
    """Masked-LM head: transform, then the decoder tied to the token embeddings, plus a bias.

    The decoder weight is not a parameter of the head: it is the token embedding matrix,
    passed in by the caller, so the tie cannot come undone when weights are loaded.
    """

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.transform = MLMTransform(config)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size))

    def forward(self, h: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        return F.linear(self.transform(h), word_embeddings, self.bias)  # (..., V)


class NSPHead(nn.Module):
    """Next-sentence prediction from the pooled output: 0 = B follows A, 1 = B is random."""

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        self.seq_relationship = nn.Linear(config.d_model, 2)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.seq_relationship(pooled)  # (B, 2)


class PretrainingOutput(NamedTuple):
    loss: torch.Tensor  # mlm_loss + nsp_loss
    mlm_loss: torch.Tensor
    nsp_loss: torch.Tensor
    mlm_logits: torch.Tensor  # (M, V): only at the M labelled positions
    mlm_labels: torch.Tensor  # (M,)
    nsp_logits: torch.Tensor  # (B, 2)


class PretrainingModel(nn.Module):
    """Encoder + MLM + NSP heads (BERT's ``BertForPreTraining``), returning the summed loss.

    >>> m = PretrainingModel(EncoderConfig(vocab_size=50, d_model=16, n_layers=1, n_heads=2,
    ...                                    d_ff=32, max_len=8))
    >>> ids = torch.tensor([[2, 5, 6, 3, 7, 3]]); labels = torch.full_like(ids, -100)
    >>> labels[0, 1] = 9
    >>> m(ids, labels, torch.tensor([0])).mlm_logits.shape
    torch.Size([1, 50])
    """

    def __init__(self, config: EncoderConfig, encoder: TransformerEncoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else TransformerEncoder(config)
        self.mlm = MLMHead(config)
        self.nsp = NSPHead(config)
        self.mlm.apply(init_weights)
        self.nsp.apply(init_weights)

    def forward(
        self,
        input_ids: torch.Tensor,
        mlm_labels: torch.Tensor,
        nsp_labels: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> PretrainingOutput:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        nsp_logits = self.nsp(self.encoder.pool(hidden))  # (B, 2)
        flat = mlm_labels.reshape(-1)  # (B*T,)
        where = flat.ne(-100).nonzero().squeeze(1)  # (M,)
        picked = hidden.reshape(-1, hidden.shape[-1]).index_select(0, where)  # (M, D)
        mlm_logits = self.mlm(picked, self.encoder.embeddings.word_embeddings.weight)  # (M, V)
        labels = flat.index_select(0, where)  # (M,)
        # float() so the softmax runs in fp32 under bf16 autocast; an empty M gives nan, as
        # transformers does for a batch without a single masked token
        mlm_loss = F.cross_entropy(mlm_logits.float(), labels)
        nsp_loss = F.cross_entropy(nsp_logits.float(), nsp_labels)
        return PretrainingOutput(
            mlm_loss + nsp_loss, mlm_loss, nsp_loss, mlm_logits, labels, nsp_logits
        )


class SequenceClassifier(nn.Module):
    """Encoder + dropout + linear on the pooled output (``BertForSequenceClassification``).

    With ``num_labels=1`` this is a cross-encoder: one relevance logit per (query, doc) pair.
    """

    def __init__(
        self, config: EncoderConfig, num_labels: int = 1, encoder: TransformerEncoder | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else TransformerEncoder(config)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(config.d_model, num_labels)
        init_weights(self.classifier)

    @property
    def num_labels(self) -> int:
        return self.classifier.out_features

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        hidden = self.encoder(input_ids, attention_mask, token_type_ids)  # (B, T, D)
        return self.classifier(self.dropout(self.encoder.pool(hidden)))  # (B, num_labels)

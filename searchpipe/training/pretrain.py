"""MLM + NSP pretraining of our encoder over an Arrow corpus, from scratch or from loaded weights.

Data: documents are split into sentences and tokenized a chunk of ``chunk_docs`` documents at
a time; each chunk yields BERT pairs ``[CLS] A [SEP] B [SEP]`` packed up to ``max_len``, B the
true continuation half of the time and a span of another document of the chunk otherwise.
Of the non-special tokens 15% are chosen; of those 80% become ``[MASK]``, 10% a token drawn
from the corpus unigram distribution and 10% stay; labels are -100 elsewhere.

Everything random about the data is a pure function of (seed, epoch, chunk): the chunk
order is a permutation per epoch and the pairs and masks of a chunk come from their own
generator. So masking is fresh every epoch, only one chunk is ever in memory (the corpus
is a memory-mapped Arrow file), and a checkpoint needs only (epoch, chunk, offset) to
resume exactly where it stopped; with the optimizer state and torch's RNG state restored,
a resumed run reproduces the uninterrupted loss curve bit for bit.

Layout of ``output``: ``checkpoints/step-NNNNNN/`` (a Hugging Face BERT folder with MLM+NSP
heads, plus ``trainer_state.pt``), ``metrics.jsonl`` (one line per step and per eval),
``tokenizer/`` (when one was trained), ``final/`` (the trained model as a Hugging Face +
sentence-transformers folder: ``searchpipe index --model OUTPUT/final`` uses it).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from searchpipe.config import StrictModel
from searchpipe.errors import InputError

if TYPE_CHECKING:
    import torch

    from searchpipe.models.encoder import PretrainingModel
    from searchpipe.models.tokenizer import Corpus


class ModelSize(StrictModel):
    """Sizes of a model trained from scratch (ignored names are errors, as everywhere)."""

    d_model: int = Field(default=128, ge=8)
    n_layers: int = Field(default=2, ge=1)
    n_heads: int = Field(default=2, ge=1)
    d_ff: int = Field(default=512, ge=8)
    max_len: int = Field(default=128, ge=8)  # size of the position table
    position: Literal["learned", "sinusoidal"] = "learned"
    dropout: float = Field(default=0.1, ge=0, lt=1)


class PretrainConfig(StrictModel):
    """Settings of ``searchpipe pretrain CONFIG.yaml`` and of ``pretrain(cfg)``.

    >>> cfg = load_config("configs/pretrain-tiny.yaml", PretrainConfig)
    >>> cfg.steps
    800
    """

    corpus: Path  # Arrow IPC file from ingest (or a BEIR corpus.jsonl)
    output: Path
    init: Literal["minilm"] | Path | None = None  # model to continue from; null: from scratch
    tokenizer: Path | None = None  # default: init's tokenizer, or one trained on the corpus
    vocab_size: int = Field(default=8000, ge=200)  # for a tokenizer trained here
    model: ModelSize | None = None  # from scratch only (default sizes when null)
    max_len: int = Field(default=128, ge=8)  # tokens per training sequence
    nsp: bool = True
    mask_prob: float = Field(default=0.15, gt=0, lt=1)
    short_seq_prob: float = Field(default=0.1, ge=0, le=1)  # BERT: some shorter pairs
    batch_size: int = Field(default=32, ge=1)
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=5e-4, gt=0)
    warmup_steps: int = Field(default=100, ge=0)
    steps: int | None = Field(default=None, ge=1)  # optimizer steps; or give epochs
    epochs: float | None = Field(default=None, gt=0)
    weight_decay: float = Field(default=0.01, ge=0)
    clip_norm: float = Field(default=1.0, gt=0)
    seed: int = 0
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    eval_every: int = Field(default=100, ge=1)
    eval_docs: int = Field(default=200, ge=1)  # last documents of the corpus, never trained on
    checkpoint_every: int = Field(default=200, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    chunk_docs: int = Field(default=256, ge=2)  # documents per data chunk (and NSP pool)
    unigram_docs: int = Field(default=100_000, ge=1)  # documents counted for the unigram


# Settings a resumed run may change without changing what was already computed.
RESUMABLE_CHANGES = {"steps", "epochs", "eval_every", "checkpoint_every", "keep_checkpoints"}


# --- data ----------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Instance:
    input_ids: np.ndarray  # (T,) int64
    token_type_ids: np.ndarray  # (T,) int64
    labels: np.ndarray  # (T,) int64, -100 where not chosen
    nsp_label: int  # 0: B follows A, 1: B is from another document


@dataclass(frozen=True)
class Position:
    """Where the data stream stands: the next instance is ``offset`` of chunk ``chunk``."""

    epoch: int = 0
    chunk: int = 0  # index into the epoch's chunk order
    offset: int = 0


class PretrainData:
    """Deterministic NSP + MLM instances of a corpus, chunk by chunk (see the module docstring).

    >>> data = PretrainData(corpus, tok, max_len=128, rows=(0, 1000), seed=0)
    >>> inst = data.chunk_instances(epoch=0, chunk=0)[0]
    """

    def __init__(
        self,
        corpus: Corpus,
        tokenizer: Any,
        max_len: int,
        rows: tuple[int, int],
        seed: int = 0,
        chunk_docs: int = 256,
        mask_prob: float = 0.15,
        nsp: bool = True,
        short_seq_prob: float = 0.1,
        unigram: np.ndarray | None = None,
    ) -> None:
        self.corpus, self.tok, self.max_len = corpus, tokenizer, max_len
        self.start, self.stop = rows
        self.seed, self.chunk_docs, self.mask_prob = seed, chunk_docs, mask_prob
        self.nsp, self.short_seq_prob = nsp, short_seq_prob
        self.vocab_size = tokenizer.get_vocab_size()
        ids = {t: tokenizer.token_to_id(t) for t in ("[CLS]", "[SEP]", "[MASK]", "[PAD]", "[UNK]")}
        self.cls_id, self.sep_id, self.mask_id = ids["[CLS]"], ids["[SEP]"], ids["[MASK]"]
        self.pad_id = ids["[PAD]"]
        self.special_ids = np.array(sorted(ids.values()), dtype=np.int64)
        self.n_chunks = math.ceil((self.stop - self.start) / chunk_docs)
        self._unigram_cdf: np.ndarray | None = None
        if unigram is not None:
            self.set_unigram(unigram)

    # tokenized documents -----------------------------------------------------------------

    def documents(self, start: int, stop: int) -> list[list[np.ndarray]]:
        """Rows [start, stop) as lists of tokenized sentences (title first), empties dropped."""
        sentences: list[str] = []
        owner: list[int] = []
        for d, (title, text) in enumerate(self.corpus.texts(start, stop)):
            parts = ([title] if title.strip() else []) + _SENTENCE_END.split(text)
            for s in parts:
                if s.strip():
                    sentences.append(s)
                    owner.append(d)
        docs: list[list[np.ndarray]] = [[] for _ in range(stop - start)]
        encoded = self.tok.encode_batch(sentences, add_special_tokens=False)
        for d, enc in zip(owner, encoded, strict=True):
            if enc.ids:
                docs[d].append(np.asarray(enc.ids, dtype=np.int64))
        return docs

    def count_unigram(self, max_docs: int) -> np.ndarray:
        """Token counts over (up to ``max_docs``) training documents; specials count zero."""
        counts = np.zeros(self.vocab_size, dtype=np.int64)
        stop = min(self.stop, self.start + max_docs)
        for a in range(self.start, stop, self.chunk_docs):
            for doc in self.documents(a, min(stop, a + self.chunk_docs)):
                for sent in doc:
                    counts += np.bincount(sent, minlength=self.vocab_size)
        counts[self.special_ids] = 0
        return counts

    def set_unigram(self, counts: np.ndarray) -> None:
        if counts.sum() <= 0:
            raise InputError(f"corpus {self.corpus.path} has no tokens to learn from")
        self._unigram_cdf = np.cumsum(counts.astype(np.float64))

    # instances ---------------------------------------------------------------------------

    def chunk_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, 1, epoch]).permutation(self.n_chunks)

    def chunk_instances(self, epoch: int, chunk: int) -> list[Instance]:
        """The shuffled, masked instances of the ``chunk``-th chunk in ``epoch``'s order."""
        index = int(self.chunk_order(epoch)[chunk])
        a = self.start + index * self.chunk_docs
        rng = np.random.default_rng([self.seed, 2, epoch, index])
        return self.instances(a, min(self.stop, a + self.chunk_docs), rng)

    def instances(self, start: int, stop: int, rng: np.random.Generator) -> list[Instance]:
        docs = [d for d in self.documents(start, stop) if d]
        pairs: list[tuple[np.ndarray, np.ndarray, int]] = []
        for d in range(len(docs)):
            pairs.extend(self._pairs(docs, d, rng))
        order = rng.permutation(len(pairs))
        pairs = [pairs[i] for i in order]
        return self._mask([self._assemble(a, b, nsp) for a, b, nsp in pairs], rng)

    def _pairs(
        self, docs: list[list[np.ndarray]], d: int, rng: np.random.Generator
    ) -> Iterator[tuple[np.ndarray, np.ndarray, int]]:
        """BERT's create_instances_from_document, with single-sentence chunks split in two."""
        max_tokens = self.max_len - 3  # [CLS] A [SEP] B [SEP]
        sents = docs[d]
        target = max_tokens
        if rng.random() < self.short_seq_prob:
            target = int(rng.integers(2, max_tokens + 1))
        chunk: list[np.ndarray] = []
        length, i = 0, 0
        while i < len(sents):
            chunk.append(sents[i])
            length += len(sents[i])
            if i == len(sents) - 1 or length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = np.concatenate(chunk[:a_end])
                random_next = self.nsp and len(docs) > 1 and rng.random() < 0.5
                if random_next:
                    other = int(rng.integers(len(docs) - 1))
                    other += other >= d  # any document but this one
                    o = docs[other]
                    b = np.concatenate(o[int(rng.integers(len(o))) :])
                    b = b[: max(1, target - len(a))]
                    i -= len(chunk) - a_end  # unused sentences go back to the pool
                elif len(chunk) >= 2:
                    b = np.concatenate(chunk[a_end:])
                else:  # one sentence: its continuation is its own second part
                    if len(a) < 2:
                        chunk, length = [], 0
                        i += 1
                        continue
                    cut = int(rng.integers(1, min(len(a), max_tokens)))
                    a, b = a[:cut], a[cut:]
                a, b = _truncate_pair(a, b, max_tokens, rng)
                yield a, b, int(random_next)
                chunk, length = [], 0
                target = max_tokens
                if rng.random() < self.short_seq_prob:
                    target = int(rng.integers(2, max_tokens + 1))
            i += 1

    def _assemble(self, a: np.ndarray, b: np.ndarray, nsp: int) -> Instance:
        ids = np.concatenate([[self.cls_id], a, [self.sep_id], b, [self.sep_id]]).astype(np.int64)
        types = np.zeros(len(ids), dtype=np.int64)
        types[len(a) + 2 :] = 1
        return Instance(ids, types, np.empty(0, dtype=np.int64), nsp)

    def _mask(self, items: list[Instance], rng: np.random.Generator) -> list[Instance]:
        """Choose ``mask_prob`` of the non-special tokens; 80% [MASK], 10% unigram, 10% kept."""
        if not items:
            return items
        assert self._unigram_cdf is not None, "set_unigram() before making instances"
        ids = np.concatenate([it.input_ids for it in items])  # all tokens of the chunk
        chosen = (rng.random(len(ids)) < self.mask_prob) & ~np.isin(ids, self.special_ids)
        labels = np.where(chosen, ids, -100)
        r = rng.random(len(ids))
        masked = ids.copy()
        masked[chosen & (r < 0.8)] = self.mask_id
        swap = chosen & (r >= 0.8) & (r < 0.9)
        u = rng.random(int(swap.sum())) * self._unigram_cdf[-1]
        masked[swap] = np.searchsorted(self._unigram_cdf, u, side="right")
        bounds = np.cumsum([len(it.input_ids) for it in items])[:-1]
        return [
            Instance(x, it.token_type_ids, y, it.nsp_label)
            for it, x, y in zip(
                items, np.split(masked, bounds), np.split(labels, bounds), strict=True
            )
        ]

    def stream(self, start: Position) -> Iterator[tuple[Instance, Position]]:
        """Instances forever (epoch after epoch) from ``start``, each with the position after it."""
        epoch, chunk, offset = start.epoch, start.chunk, start.offset
        while True:
            while chunk < self.n_chunks:
                items = self.chunk_instances(epoch, chunk)
                for k in range(offset, len(items)):
                    after = (
                        Position(epoch, chunk, k + 1)
                        if k + 1 < len(items)
                        else Position(epoch, chunk + 1, 0)
                    )
                    yield items[k], after
                chunk, offset = chunk + 1, 0
            epoch, chunk, offset = epoch + 1, 0, 0


def _truncate_pair(
    a: np.ndarray, b: np.ndarray, max_tokens: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Trim the longer segment, from a random end, until the pair fits (as BERT does)."""
    while len(a) + len(b) > max_tokens:
        excess = len(a) + len(b) - max_tokens
        longer_is_a = len(a) > len(b)
        seg = a if longer_is_a else b
        k = max(1, min(excess, abs(len(a) - len(b))))
        seg = seg[k:] if rng.random() < 0.5 else seg[:-k]
        a, b = (seg, b) if longer_is_a else (a, seg)
    return a, b


def collate(items: list[Instance], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of instances to the longest: tensors the model's forward takes."""
    import torch

    T = max(len(it.input_ids) for it in items)
    B = len(items)
    ids = np.full((B, T), pad_id, dtype=np.int64)
    types = np.zeros((B, T), dtype=np.int64)
    labels = np.full((B, T), -100, dtype=np.int64)
    mask = np.zeros((B, T), dtype=np.int64)
    for i, it in enumerate(items):
        n = len(it.input_ids)
        ids[i, :n], types[i, :n], labels[i, :n], mask[i, :n] = (
            it.input_ids,
            it.token_type_ids,
            it.labels,
            1,
        )
    return {
        "input_ids": torch.from_numpy(ids),
        "token_type_ids": torch.from_numpy(types),
        "attention_mask": torch.from_numpy(mask),
        "mlm_labels": torch.from_numpy(labels),
        "nsp_labels": torch.tensor([it.nsp_label for it in items], dtype=torch.long),
    }


# --- training ------------------------------------------------------------------------------


def lr_at(step: int, cfg: PretrainConfig, total: int) -> float:
    """Linear warmup to ``cfg.lr`` over ``warmup_steps``, then linear decay to 0 at ``total``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    return cfg.lr * max(0.0, (total - step) / max(1, total - cfg.warmup_steps))


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and embeddings; none on LayerNorms and biases."""
    import torch

    no_decay = {
        id(p) for m in model.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()
    }
    decay: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (rest if id(p) in no_decay or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def _config_json(cfg: PretrainConfig) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def _checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    found = [p for p in root.glob("step-*") if (p / "trainer_state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def _tokenizer_dir(cfg: PretrainConfig, init_path: Path | None) -> Path:
    from searchpipe.models.tokenizer import train_tokenizer

    if cfg.tokenizer is not None:
        if not cfg.tokenizer.is_dir():
            raise InputError(f"tokenizer folder {cfg.tokenizer} does not exist; fix 'tokenizer:'")
        return cfg.tokenizer
    if init_path is not None:
        return init_path
    trained = cfg.output / "tokenizer"
    if not (trained / "tokenizer.json").is_file():
        train_tokenizer(cfg.corpus, cfg.vocab_size, trained)
    return trained


def _build_model(cfg: PretrainConfig, tok: Any, init_path: Path | None) -> PretrainingModel:
    import torch

    from searchpipe.models.bert_io import load_model
    from searchpipe.models.encoder import EncoderConfig, PretrainingModel

    torch.manual_seed(cfg.seed)  # fresh weights (all, or the heads MiniLM lacks) are seeded
    if init_path is not None:
        if cfg.model is not None:
            raise InputError(
                "config sets both 'init' and 'model'; sizes come from the init model, so remove "
                "'model' (or set 'init: null' to train from scratch)"
            )
        model = load_model(init_path, kind="pretraining")
        assert isinstance(model, PretrainingModel)
        if model.config.vocab_size < tok.get_vocab_size():
            raise InputError(
                f"tokenizer has {tok.get_vocab_size()} tokens but the init model only "
                f"{model.config.vocab_size}; use the init model's own tokenizer (tokenizer: null)"
            )
        return model
    size = cfg.model or ModelSize()
    config = EncoderConfig(
        vocab_size=tok.get_vocab_size(),
        pad_token_id=tok.token_to_id("[PAD]"),
        **size.model_dump(),
    )
    return PretrainingModel(config)


def held_out_metrics(
    model: PretrainingModel, batches: list[dict[str, torch.Tensor]], bf16: bool, device: str
) -> dict[str, float]:
    """MLM loss / accuracy (over masked tokens) and NSP accuracy on held-out batches."""
    import torch

    was_training = model.training
    model.eval()
    loss_sum, correct, count, nsp_correct, n_pairs = 0.0, 0, 0, 0, 0
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        for batch in batches:
            b = {k: v.to(device) for k, v in batch.items()}
            out = model(**b)
            m = len(out.mlm_labels)
            loss_sum += float(out.mlm_loss) * m
            correct += int((out.mlm_logits.argmax(-1) == out.mlm_labels).sum())
            count += m
            nsp_correct += int((out.nsp_logits.argmax(-1) == b["nsp_labels"]).sum())
            n_pairs += len(b["nsp_labels"])
    model.train(was_training)
    return {
        "eval_mlm_loss": loss_sum / max(1, count),
        "eval_mlm_acc": correct / max(1, count),
        "eval_nsp_acc": nsp_correct / max(1, n_pairs),
    }


def pretrain(cfg: PretrainConfig, resume: bool = True, stop_after: int | None = None) -> Path:
    """Pretrain (or continue pretraining) and return the final model folder ``OUTPUT/final``.

    ``resume``: continue from the latest checkpoint in ``cfg.output`` if there is one.
    ``stop_after``: stop after this many optimizer steps, as if killed, and return ``output``
    (for tests and time-boxed runs); the run resumes from its last checkpoint.

    >>> pretrain(load_config("configs/pretrain-tiny.yaml", PretrainConfig))
    PosixPath('configs/../runs/pretrain-tiny/final')
    """
    import torch
    from tqdm.auto import tqdm

    from searchpipe.models.bert_io import load_model, save_hf
    from searchpipe.models.precision import resolve_precision
    from searchpipe.models.resolve import resolve_model
    from searchpipe.models.tokenizer import Corpus, load_tokenizer

    out = cfg.output
    out.mkdir(parents=True, exist_ok=True)
    saved_cfg = out / "pretrain_config.json"
    ckpts = _checkpoints(out) if resume else []
    if ckpts and saved_cfg.is_file():
        before = json.loads(saved_cfg.read_text(encoding="utf-8"))
        now = _config_json(cfg)
        changed = sorted(k for k in now if k not in RESUMABLE_CHANGES and before.get(k) != now[k])
        if changed:
            raise InputError(
                f"{out} holds a run with different settings ({', '.join(changed)}); resuming would "
                "not reproduce it: restore them, or pass --no-resume / another output folder"
            )
    if not ckpts:  # a fresh start: nothing of an earlier (or killed) run may leak into it
        stale = ["checkpoints", "metrics.jsonl", "final", "unigram.npy"]
        stale += ["tokenizer"] if cfg.tokenizer is None else []  # ours, trained for that run
        for p in (out / name for name in stale):
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    saved_cfg.write_text(json.dumps(_config_json(cfg), indent=2) + "\n", encoding="utf-8")

    device = (
        "cuda"
        if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
        else "cpu"
    )
    bf16 = resolve_precision(cfg.precision, device) == "bf16"
    corpus = Corpus(cfg.corpus)
    n = corpus.num_rows
    n_eval = min(cfg.eval_docs, n // 5)
    if n - n_eval < 2:
        raise InputError(f"corpus {cfg.corpus} has {n} documents; pretraining needs at least 3")
    init_path = resolve_model(str(cfg.init)).path if cfg.init is not None else None
    tok_dir = _tokenizer_dir(cfg, init_path)
    tok = load_tokenizer(tok_dir)
    model = _build_model(cfg, tok, init_path)
    if cfg.max_len > model.config.max_len:
        raise InputError(
            f"max_len {cfg.max_len} is longer than the model's position table "
            f"({model.config.max_len}); lower max_len"
        )
    common = dict(
        seed=cfg.seed, chunk_docs=cfg.chunk_docs, mask_prob=cfg.mask_prob, nsp=cfg.nsp,
        short_seq_prob=cfg.short_seq_prob,
    )  # fmt: skip
    data = PretrainData(corpus, tok, cfg.max_len, (0, n - n_eval), **common)  # type: ignore[arg-type]
    unigram_file = out / "unigram.npy"
    if unigram_file.is_file():  # only there when resuming
        unigram = np.load(unigram_file)
    else:
        unigram = data.count_unigram(cfg.unigram_docs)
        np.save(unigram_file, unigram)
    data.set_unigram(unigram)
    eval_data = PretrainData(corpus, tok, cfg.max_len, (n - n_eval, n), unigram=unigram, **common)  # type: ignore[arg-type]
    eval_items = eval_data.instances(n - n_eval, n, np.random.default_rng([cfg.seed, 3]))
    eval_batches = [
        collate(eval_items[i : i + cfg.batch_size], data.pad_id)
        for i in range(0, len(eval_items), cfg.batch_size)
    ]
    per_step = cfg.batch_size * cfg.grad_accum
    if cfg.steps is not None:
        total = cfg.steps
    elif cfg.epochs is not None:
        per_epoch = sum(len(data.chunk_instances(0, c)) for c in range(data.n_chunks))
        total = max(1, math.ceil(cfg.epochs * per_epoch / per_step))
    else:
        raise InputError("config sets neither 'steps' nor 'epochs'; set one of them")

    model.to(device).train()
    groups = _param_groups(model, cfg.weight_decay)
    try:  # one fused kernel for all tensors: on CPU many times faster than the per-tensor loop
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, fused=True)
    except RuntimeError:
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr)
    step, position = 0, Position()
    metrics_path = out / "metrics.jsonl"
    if ckpts:
        last = ckpts[-1]
        state = torch.load(last / "trainer_state.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(load_model(last, kind="pretraining").state_dict())
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if device == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"])
        step, position = int(state["step"]), Position(*state["position"])
        if metrics_path.is_file():  # drop what a killed run logged after its last checkpoint
            kept = [
                line
                for line in metrics_path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line)["step"] <= step
            ]
            metrics_path.write_text("".join(f"{x}\n" for x in kept), encoding="utf-8")
        print(f"resuming {out} from {last.name}", file=sys.stderr)

    st_from = init_path  # keep the init model's pooling (and normalisation), if it has them

    def log(record: dict[str, Any]) -> None:
        with open(metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def checkpoint() -> None:
        final = out / "checkpoints" / f"step-{step:06d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_hf(model, tmp, tok_dir, st_from, max_seq_length=cfg.max_len)
        torch.save(
            {
                "step": step,
                "position": [position.epoch, position.chunk, position.offset],
                "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state() if device == "cuda" else None,
            },
            tmp / "trainer_state.pt",
        )
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)  # a checkpoint exists whole or not at all
        for old in _checkpoints(out)[: -cfg.keep_checkpoints]:
            shutil.rmtree(old)

    if step == 0:
        log({"step": 0, **held_out_metrics(model, eval_batches, bf16, device)})
    stream = data.stream(position)
    bar = tqdm(total=total, initial=step, disable=None, unit="step", dynamic_ncols=True)
    tokens_seen, t0 = 0, time.perf_counter()
    while step < total:
        lr = lr_at(step, cfg, total)
        for group in optimizer.param_groups:
            group["lr"] = lr
        sums = {"loss": 0.0, "mlm_loss": 0.0, "nsp_loss": 0.0}
        for _ in range(cfg.grad_accum):
            items = []
            for _ in range(cfg.batch_size):
                item, position = next(stream)
                items.append(item)
            batch = {k: v.to(device) for k, v in collate(items, data.pad_id).items()}
            tokens_seen += int(batch["attention_mask"].sum())
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                result = model(**batch)
            (result.loss / cfg.grad_accum).backward()
            for key in sums:
                sums[key] += getattr(result, key).item() / cfg.grad_accum
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        rate = tokens_seen / max(1e-9, time.perf_counter() - t0)
        log({"step": step, **sums, "lr": lr, "grad_norm": grad_norm, "epoch": position.epoch,
             "tokens_per_s": round(rate, 1)})  # fmt: skip
        bar.update(1)
        bar.set_postfix(loss=f"{sums['loss']:.3f}", tok_s=f"{rate:,.0f}", refresh=False)
        if step % cfg.eval_every == 0 or step == total:
            ev = held_out_metrics(model, eval_batches, bf16, device)
            log({"step": step, **ev})
            bar.write(
                f"step {step}: eval mlm_loss {ev['eval_mlm_loss']:.3f} "
                f"mlm_acc {ev['eval_mlm_acc']:.3f} nsp_acc {ev['eval_nsp_acc']:.3f}",
                file=sys.stderr,
            )
        if step % cfg.checkpoint_every == 0 or step == total:
            checkpoint()
        if stop_after is not None and step >= stop_after and step < total:
            bar.close()
            return out
    bar.close()
    final = out / "final"
    shutil.rmtree(final, ignore_errors=True)
    save_hf(model.cpu().eval(), final, tok_dir, st_from, max_seq_length=cfg.max_len)
    return final

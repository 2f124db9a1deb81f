"""Pretraining throughput: our encoder vs ``transformers.BertForPreTraining``, like for like.

Both models get the same config, the same starting weights (HF's random init, copied into
ours), the same batches (MLM labels on 15% of tokens, NSP labels), dropout on, the same
precision (bf16 autocast where supported, with --precision auto) and the same optimizer
(AdamW, fused where supported); a step is forward + MLM and NSP loss + backward + optimizer step. They run in one
process in alternating rounds so drift in the machine's speed hits both alike.

    python benchmarks/pretrain_throughput.py            # MiniLM-sized, batch 16 x 128 tokens
    python benchmarks/pretrain_throughput.py --json     # {"ours_tokens_per_s": ..., ...}
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

import torch  # noqa: E402

from searchpipe.models.bert_io import config_to_hf, hf_to_ours  # noqa: E402
from searchpipe.models.encoder import EncoderConfig, PretrainingModel  # noqa: E402
from searchpipe.models.precision import resolve_precision  # noqa: E402

PRESETS = {
    "minilm": EncoderConfig(),  # all-MiniLM-L6-v2's shape: 6 x 384, 12 heads, 30522 tokens
    "tiny": EncoderConfig(vocab_size=4000, d_model=128, n_layers=2, n_heads=2, d_ff=512),
    "base": EncoderConfig(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
}


def make_batch(config: EncoderConfig, B: int, T: int, seed: int) -> dict[str, torch.Tensor]:
    """[CLS] A [SEP] B [SEP] of random tokens, 15% MLM labels (never on specials), NSP labels."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, config.vocab_size, (B, T), generator=g)
    ids[:, 0], ids[:, T // 2], ids[:, -1] = 101, 102, 102
    types = torch.zeros(B, T, dtype=torch.long)
    types[:, T // 2 + 1 :] = 1
    chosen = torch.rand(B, T, generator=g) < 0.15
    chosen[:, [0, T // 2, T - 1]] = False
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    ids = torch.where(chosen, torch.full_like(ids, 103), ids)  # [MASK]
    return {
        "input_ids": ids,
        "token_type_ids": types,
        "attention_mask": torch.ones(B, T, dtype=torch.long),
        "labels": labels,
        "nsp": torch.randint(0, 2, (B,), generator=g),
    }


def build(config: EncoderConfig, seed: int) -> tuple[torch.nn.Module, PretrainingModel]:
    from transformers import BertConfig, BertForPreTraining

    torch.manual_seed(seed)
    hf = BertForPreTraining(BertConfig(**config_to_hf(config), attn_implementation="sdpa"))
    ours = PretrainingModel(config)
    ours.load_state_dict(hf_to_ours(hf.state_dict(), config.n_layers))
    return hf.train(), ours.train()


def adamw(model: torch.nn.Module) -> torch.optim.Optimizer:
    """The same optimizer for both: AdamW, fused (one kernel for all tensors) where supported."""
    try:
        return torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    except RuntimeError:
        return torch.optim.AdamW(model.parameters(), lr=1e-4)


def hf_step(model: torch.nn.Module, opt: torch.optim.Optimizer, b: dict, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(
            input_ids=b["input_ids"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
            labels=b["labels"],
            next_sentence_label=b["nsp"],
        )
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def our_step(model: PretrainingModel, opt: torch.optim.Optimizer, b: dict, bf16: bool) -> float:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(
            b["input_ids"],
            b["labels"],
            b["nsp"],
            attention_mask=b["attention_mask"],
            token_type_ids=b["token_type_ids"],
        )
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out.loss.detach())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="minilm")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=2, help="timed steps per model per round")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    config = PRESETS[args.preset]
    bf16 = resolve_precision(args.precision, "cpu") == "bf16"
    hf, ours = build(config, args.seed)
    hf_opt = adamw(hf)
    our_opt = adamw(ours)
    batches = [make_batch(config, args.batch_size, args.seq_len, args.seed + i) for i in range(4)]
    tokens_per_step = args.batch_size * args.seq_len

    # same weights, same batch, no dropout: the two losses must agree before we time anything
    hf.eval(), ours.eval()
    with torch.no_grad():
        b = batches[0]
        a = hf(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")},
               labels=b["labels"], next_sentence_label=b["nsp"]).loss  # fmt: skip
        o = ours(b["input_ids"], b["labels"], b["nsp"], b["attention_mask"], b["token_type_ids"])
    assert abs(float(a) - float(o.loss)) < 1e-4, (float(a), float(o.loss))
    hf.train(), ours.train()

    for i in range(2):  # warm-up: allocator, oneDNN kernel selection
        hf_step(hf, hf_opt, batches[i], bf16)
        our_step(ours, our_opt, batches[i], bf16)
    times = {"ours": 0.0, "hf": 0.0}
    for r in range(args.rounds):
        for name, fn, model, opt in (
            ("ours", our_step, ours, our_opt),
            ("hf", hf_step, hf, hf_opt),
        ):
            t = time.perf_counter()
            for s in range(args.steps):
                fn(model, opt, batches[(r + s) % len(batches)], bf16)  # type: ignore[operator]
            times[name] += time.perf_counter() - t
    n_tokens = tokens_per_step * args.steps * args.rounds
    result = {
        "ours_tokens_per_s": round(n_tokens / times["ours"], 1),
        "hf_tokens_per_s": round(n_tokens / times["hf"], 1),
    }
    result["ratio"] = round(result["ours_tokens_per_s"] / result["hf_tokens_per_s"], 3)
    if args.json:
        print(json.dumps(result))
        return
    print(
        f"preset {args.preset}, batch {args.batch_size} x {args.seq_len} tokens, "
        f"{'bf16 autocast' if bf16 else 'fp32'}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.steps} steps",
        file=sys.stderr,
    )
    print(f"ours: {result['ours_tokens_per_s']:,.0f} tokens/s")
    print(f"transformers.BertForPreTraining: {result['hf_tokens_per_s']:,.0f} tokens/s")
    print(f"ratio: {result['ratio']:.2f}x")


if __name__ == "__main__":
    main()

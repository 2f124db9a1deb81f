"""Index build at scale: docs/s and peak RSS from 10k to 1M synthetic documents.

    python benchmarks/scale.py [--sizes 10000,100000,1000000] [--json]

Each size is a fresh subprocess running ``searchpipe index`` on a synthetic Arrow corpus
(8-24 random words per document from the sample corpus's vocabulary). The encoder is a tiny
random BERT (2 layers, 64 dims, MiniLM's tokenizer) saved as a sentence-transformers folder:
MiniLM itself embeds ~50 docs/s on 2 cores, so 1M documents would take days; the tiny model
makes the pipeline's own costs (ingest, tokenization, batching, Arrow shards, FAISS adds,
doc store writes) visible. Peak RSS should stay near model + index + one batch, and docs/s
flat across sizes. BM25 is left out here: bm25s holds every document's token ids in memory
while it builds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
from common import ROOT, log


def tiny_model(folder: Path) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import AutoTokenizer, BertConfig, BertModel

    from searchpipe.models.resolve import resolve_model

    if (folder / "modules.json").exists():
        return folder
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(resolve_model("minilm").path))
    bert = BertModel(
        BertConfig(
            vocab_size=tok.vocab_size,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
        )
    )
    raw = folder / "raw"
    bert.save_pretrained(raw)
    tok.save_pretrained(raw)
    word = Transformer(str(raw), max_seq_length=64)
    st = SentenceTransformer(modules=[word, Pooling(64, "mean"), Normalize()], device="cpu")
    st.save(str(folder))
    return folder


def synthetic_corpus(path: Path, n: int, seed: int = 0) -> Path:
    if path.exists():
        return path
    words = sorted(
        {
            w.strip(".,;:()").lower()
            for line in open(ROOT / "searchpipe/data/sample/corpus.jsonl")
            for w in json.loads(line)["text"].split()
        }
        - {""}
    )
    vocab = np.array(words)
    rng = np.random.default_rng(seed)
    schema = pa.schema([("_id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    with ipc.new_file(str(path), schema) as w:
        for start in range(0, n, 50_000):
            m = min(50_000, n - start)
            lengths = rng.integers(8, 25, m)
            picks = vocab[rng.integers(0, len(vocab), lengths.sum())]
            ends = np.cumsum(lengths)
            texts = [" ".join(picks[e - ln : e]) for e, ln in zip(ends, lengths, strict=True)]
            ids = [f"d{i}" for i in range(start, start + m)]
            w.write_batch(
                pa.record_batch([pa.array(ids), pa.array([""] * m), pa.array(texts)], schema=schema)
            )
    return path


def run_size(n: int, model: Path, work: Path) -> dict:
    corpus = synthetic_corpus(work / f"corpus-{n}.arrow", n)
    home = work / f"home-{n}"
    env = {**os.environ, "SEARCHPIPE_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "searchpipe",
        "index",
        str(corpus),
        "--name",
        f"s{n}",
        "--model",
        str(model),
        "--no-bm25",
        "--json",
    ]
    t0 = time.perf_counter()
    with open(work / f"log-{n}.txt", "w") as log_file:
        proc = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS
    seconds = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"index of {n} docs failed: {(work / f'log-{n}.txt').read_text()[-2000:]}")
    peak_kb = usage.ru_maxrss
    index_bytes = sum(f.stat().st_size for f in (home / "indexes").rglob("*") if f.is_file())
    return {
        "docs": n,
        "seconds": round(seconds, 1),
        "docs_per_s": round(n / seconds, 1),
        "peak_rss_mb": round(peak_kb / 1024, 1),
        "index_mb": round(index_bytes / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="searchpipe-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    model = tiny_model(work / "tiny-bert")
    rows = []
    for n in map(int, args.sizes.split(",")):
        log(f"scale: indexing {n} synthetic docs")
        rows.append(run_size(n, model, work))
        log(json.dumps(rows[-1]))
    if args.json:
        print(json.dumps({"sizes": rows}, indent=2))
    else:
        print(f"{'docs':>9} {'seconds':>9} {'docs/s':>9} {'peak RSS MB':>12} {'index MB':>9}")
        for r in rows:
            print(
                f"{r['docs']:>9} {r['seconds']:>9} {r['docs_per_s']:>9} {r['peak_rss_mb']:>12} {r['index_mb']:>9}"
            )


if __name__ == "__main__":
    main()

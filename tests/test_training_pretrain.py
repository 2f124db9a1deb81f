"""Pretraining data and loop: masking statistics, NSP pairs, exact resume, a loss that falls."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from searchpipe.config import validate  # noqa: E402
from searchpipe.errors import InputError  # noqa: E402
from searchpipe.models.tokenizer import Corpus, load_tokenizer, train_tokenizer  # noqa: E402
from searchpipe.training.pretrain import Position, PretrainConfig, PretrainData, pretrain  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def one_thread():  # type: ignore[no-untyped-def]
    """One torch thread: on a shared 2-core machine, OpenMP threads waiting on each other
    make small ops many times slower; the results do not depend on the thread count."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TOPICS = {
    "astro": ["star", "planet", "orbit", "galaxy", "comet", "telescope", "moon", "nebula"],
    "bio": ["cell", "protein", "gene", "enzyme", "tissue", "membrane", "virus", "neuron"],
    "geo": ["rock", "river", "glacier", "volcano", "mountain", "valley", "sediment", "fault"],
    "med": ["patient", "dose", "trial", "therapy", "symptom", "clinic", "drug", "outcome"],
}
VERBS = ["affects", "contains", "shapes", "reduces", "drives", "follows", "binds", "crosses"]


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    """An ingest-style Arrow IPC file: doc_id, title, text, metadata; topic words per doc."""
    rng = random.Random(seed)
    rows = {"doc_id": [], "title": [], "text": [], "metadata": []}
    for d in range(n_docs):
        topic = list(TOPICS)[d % len(TOPICS)]
        words = TOPICS[topic]
        sentences = []
        for _ in range(rng.randint(3, 9)):
            a, b = rng.sample(words, 2)
            sentences.append(f"The {a} {rng.choice(VERBS)} the {b} in study {rng.randint(1, 9)}.")
        rows["doc_id"].append(f"d{d}")
        rows["title"].append(f"On the {words[d % 8]} and the {words[(d + 3) % 8]}")
        rows["text"].append(" ".join(sentences))
        rows["metadata"].append("{}")
    table = pa.table(rows)
    with pa.ipc.new_file(str(path), table.schema) as w:
        for batch in table.to_batches(max_chunksize=25):  # several record batches
            w.write_batch(batch)
    return path


@pytest.fixture(scope="module")
def corpus_and_tokenizer(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pretrain")
    corpus = write_corpus(root / "corpus.arrow")
    tok = train_tokenizer(corpus, 300, root / "tok")
    return corpus, tok


def test_tokenizer_trains_on_arrow_and_loads_in_transformers(corpus_and_tokenizer):
    from transformers import AutoTokenizer

    corpus, tok_dir = corpus_and_tokenizer
    tok = load_tokenizer(tok_dir)
    hf = AutoTokenizer.from_pretrained(str(tok_dir))
    text, pair = "The star orbits the moon.", "A cell binds a protein."
    assert hf(text, pair)["input_ids"] == tok.encode(text, pair).ids
    assert hf(text, pair)["token_type_ids"] == tok.encode(text, pair).type_ids
    ids = tok.encode(text).tokens
    assert ids[0] == "[CLS]" and ids[-1] == "[SEP]" and "star" in ids
    assert [tok.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [
        0, 1, 2, 3, 4,
    ]  # fmt: skip


def test_corpus_reads_jsonl_and_rejects_a_text_file(tmp_path):
    (tmp_path / "corpus.jsonl").write_text(
        '{"_id": "1", "title": "A", "text": "one"}\n{"_id": "2", "title": "", "text": "two"}\n'
    )
    assert Corpus(tmp_path / "corpus.jsonl").texts(0, 2) == [("A", "one"), ("", "two")]
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="neither an Arrow IPC file"):
        Corpus(tmp_path / "notes.csv")


def make_data(corpus: Path, tok_dir: Path, **kw) -> PretrainData:  # type: ignore[no-untyped-def]
    c = Corpus(corpus)
    data = PretrainData(c, load_tokenizer(tok_dir), kw.pop("max_len", 64), (0, c.num_rows), **kw)
    data.set_unigram(data.count_unigram(10_000))
    return data


def all_instances(data: PretrainData, epoch: int = 0) -> list:
    return [it for c in range(data.n_chunks) for it in data.chunk_instances(epoch, c)]


def test_unigram_counts_match_the_tokenized_corpus(corpus_and_tokenizer):
    corpus, tok_dir = corpus_and_tokenizer
    data = make_data(corpus, tok_dir, chunk_docs=32)
    tok = load_tokenizer(tok_dir)
    expected = np.zeros(tok.get_vocab_size(), dtype=np.int64)
    for title, text in Corpus(corpus).texts(0, 120):
        for s in (title, text):  # whole texts: sentence splitting must not change the tokens
            for e in tok.encode(s, add_special_tokens=False).ids:
                expected[e] += 1
    expected[:5] = 0  # the specials
    assert np.array_equal(data.count_unigram(10_000), expected)


def test_masking_statistics(corpus_and_tokenizer):
    corpus, tok_dir = corpus_and_tokenizer
    data = make_data(corpus, tok_dir, chunk_docs=40)
    items = [it for epoch in range(6) for it in all_instances(data, epoch)]
    ids = np.concatenate([it.input_ids for it in items])
    labels = np.concatenate([it.labels for it in items])
    special = np.isin(np.where(labels >= 0, labels, ids), data.special_ids)
    chosen = labels >= 0
    n = int((~special).sum())
    assert n > 40_000
    assert not (chosen & special).any()  # never a special token
    assert abs(chosen.sum() / n - 0.15) < 0.01
    as_mask = ids[chosen] == data.mask_id
    kept = ids[chosen] == labels[chosen]
    swapped = ~as_mask & ~kept
    # a random token equal to the original counts as kept: allow for it in the 10% / 10%
    assert abs(as_mask.mean() - 0.8) < 0.02
    assert abs(swapped.mean() - 0.1) < 0.02 and abs(kept.mean() - 0.1) < 0.02
    assert not np.isin(ids[chosen][swapped], data.special_ids).any()
    # special positions keep their token; [CLS] first, [SEP] twice
    for it in items[:50]:
        assert it.input_ids[0] == data.cls_id and (it.input_ids == data.sep_id).sum() == 2


def test_random_tokens_follow_the_unigram_distribution(corpus_and_tokenizer):
    corpus, tok_dir = corpus_and_tokenizer
    data = make_data(corpus, tok_dir, chunk_docs=40)
    counts = np.zeros(data.vocab_size, dtype=np.int64)
    counts[[10, 11, 12]] = [700, 200, 100]  # a skewed unigram over three tokens
    data.set_unigram(counts)
    items = [it for epoch in range(4) for it in all_instances(data, epoch)]
    ids = np.concatenate([it.input_ids for it in items])
    labels = np.concatenate([it.labels for it in items])
    swapped = (labels >= 0) & (ids != data.mask_id) & (ids != labels)
    drawn = ids[swapped]
    assert len(drawn) > 500 and set(np.unique(drawn)) <= {10, 11, 12}
    freq = np.bincount(drawn, minlength=13)[10:13] / len(drawn)
    # counts equal to the original token are invisible; the rest keeps the 7:2:1 shape
    assert freq[0] > 0.6 and freq[1] > 0.12 and freq[2] > 0.05 and freq[0] > 2 * freq[1]


def test_dynamic_masking_differs_between_epochs_but_is_reproducible(corpus_and_tokenizer):
    corpus, tok_dir = corpus_and_tokenizer
    data = make_data(corpus, tok_dir, chunk_docs=40)
    a, b = data.chunk_instances(0, 0), data.chunk_instances(1, 0)
    again = data.chunk_instances(0, 0)
    assert all(np.array_equal(x.labels, y.labels) for x, y in zip(a, again, strict=True))
    assert not all(
        len(x.labels) == len(y.labels) and np.array_equal(x.labels, y.labels)
        for x, y in zip(a, b, strict=False)
    )


def test_nsp_balance_and_pair_provenance(corpus_and_tokenizer):
    corpus, tok_dir = corpus_and_tokenizer
    data = make_data(corpus, tok_dir, max_len=48, short_seq_prob=0.0)
    labels = [it.nsp_label for it in all_instances(data)] + [
        it.nsp_label for it in all_instances(data, 1)
    ]
    assert len(labels) > 400
    assert abs(np.mean(labels) - 0.5) < 0.06
    # provenance, on documents whose token ids say where they come from: d * 1000 + position
    rng = np.random.default_rng(0)
    docs = []
    for d in range(6):
        sizes = rng.integers(3, 12, size=8)
        bounds = np.cumsum(np.r_[0, sizes])
        docs.append(
            [np.arange(a, b) + 1000 * (d + 1) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        )
    pairs = [(d, *p) for d in range(6) for _ in range(30) for p in data._pairs(docs, d, rng)]
    assert {nsp for *_, nsp in pairs} == {0, 1}
    for d, a, b, nsp in pairs:
        assert 1 <= len(a) and 1 <= len(b) and len(a) + len(b) <= 48 - 3
        assert set(a // 1000) == {d + 1}  # A comes from the document
        if nsp == 0:  # B follows A in the same document
            assert set(b // 1000) == {d + 1} and b.min() > a.max()
        else:
            assert (d + 1) not in set(b // 1000) and len(set(b // 1000)) == 1


def tiny_config(corpus: Path, tok_dir: Path, out: Path, **kw) -> PretrainConfig:  # type: ignore[no-untyped-def]
    raw = {
        "corpus": str(corpus), "output": str(out), "tokenizer": str(tok_dir),
        "model": {"d_model": 32, "n_layers": 1, "n_heads": 2, "d_ff": 64, "max_len": 32},
        "max_len": 32, "batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "steps": 12,
        "eval_every": 4, "eval_docs": 20, "checkpoint_every": 4, "chunk_docs": 16,
        "precision": "auto", "seed": 3,
    }  # fmt: skip
    raw.update(kw)
    return validate(raw, PretrainConfig, source="test")


def read_metrics(out: Path) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [
        {k: v for k, v in json.loads(x).items() if k != "tokens_per_s"}  # timing differs
        for x in lines
    ]


def test_resume_reproduces_the_uninterrupted_run(corpus_and_tokenizer, tmp_path):
    corpus, tok_dir = corpus_and_tokenizer
    straight = pretrain(tiny_config(corpus, tok_dir, tmp_path / "a", grad_accum=2), resume=False)
    cfg = tiny_config(corpus, tok_dir, tmp_path / "b", grad_accum=2)
    pretrain(cfg, resume=False, stop_after=7)  # "killed" after step 7; last checkpoint: 4
    assert len([r for r in read_metrics(tmp_path / "b") if "loss" in r]) == 7
    resumed = pretrain(cfg, resume=True)
    a, b = read_metrics(tmp_path / "a"), read_metrics(tmp_path / "b")
    assert len([r for r in a if "loss" in r]) == 12
    assert a == b  # every loss, learning rate, grad norm and eval figure, exactly
    from safetensors.torch import load_file

    wa, wb = load_file(straight / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert all(np.array_equal(wa[k].numpy(), wb[k].numpy()) for k in wa)


def test_resume_refuses_changed_settings(corpus_and_tokenizer, tmp_path):
    corpus, tok_dir = corpus_and_tokenizer
    pretrain(tiny_config(corpus, tok_dir, tmp_path, steps=4), resume=False)
    with pytest.raises(InputError, match="different settings \\(lr\\)"):
        pretrain(tiny_config(corpus, tok_dir, tmp_path, steps=8, lr=1e-3), resume=True)


def test_tiny_pretraining_loss_falls_and_output_loads(corpus_and_tokenizer, tmp_path):
    from sentence_transformers import SentenceTransformer

    corpus, tok_dir = corpus_and_tokenizer
    cfg = tiny_config(corpus, tok_dir, tmp_path, steps=120, eval_every=60, checkpoint_every=120,
                      lr=5e-3, warmup_steps=10,
                      model={"d_model": 64, "n_layers": 2, "n_heads": 2, "d_ff": 128, "max_len": 64},
                      max_len=64, batch_size=16)  # fmt: skip
    final = pretrain(cfg, resume=False)
    evals = [r for r in read_metrics(tmp_path) if "eval_mlm_loss" in r]
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and abs(first["eval_mlm_loss"] - np.log(300)) < 0.5
    assert last["eval_mlm_loss"] < first["eval_mlm_loss"] - 1.5
    assert last["eval_mlm_acc"] > 0.2
    st = SentenceTransformer(str(final), device="cpu")
    assert st.encode(["The star orbits the moon."]).shape == (1, 64)


def test_config_errors_name_the_problem(corpus_and_tokenizer, tmp_path):
    corpus, tok_dir = corpus_and_tokenizer
    with pytest.raises(InputError, match="unknown key 'bogus'"):
        tiny_config(corpus, tok_dir, tmp_path, bogus=1)
    with pytest.raises(InputError, match="both 'init' and 'model'"):
        pretrain(tiny_config(corpus, tok_dir, tmp_path, init="minilm", tokenizer=None))


def test_stream_resumes_mid_chunk(corpus_and_tokenizer):
    corpus, tok_dir = corpus_and_tokenizer
    data = make_data(corpus, tok_dir, chunk_docs=30)
    stream = data.stream(Position())
    first = [next(stream) for _ in range(150)]
    pos = first[99][1]
    again = data.stream(pos)
    for (item, _), (other, _) in zip(first[100:], (next(again) for _ in range(50)), strict=True):
        assert np.array_equal(item.input_ids, other.input_ids)
        assert np.array_equal(item.labels, other.labels)


def test_cli_tokenizer_train_and_pretrain_from_yaml(corpus_and_tokenizer, tmp_path):
    import yaml
    from click.testing import CliRunner

    from searchpipe.cli.encoder import pretrain_cmd, tokenizer_group

    corpus, _ = corpus_and_tokenizer
    runner = CliRunner()
    result = runner.invoke(
        tokenizer_group,
        ["train", str(corpus), "--vocab-size", "250", "--output", str(tmp_path / "t")],
    )
    assert result.exit_code == 0, result.output
    assert load_tokenizer(tmp_path / "t").get_vocab_size() <= 250
    config = {  # paths relative to the config file's folder
        "corpus": os.path.relpath(corpus, tmp_path), "output": "run", "tokenizer": "t",
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 32},
        "max_len": 32, "batch_size": 4, "steps": 2, "eval_docs": 10, "chunk_docs": 16,
    }  # fmt: skip
    (tmp_path / "pretrain.yaml").write_text(yaml.safe_dump(config))
    result = runner.invoke(pretrain_cmd, [str(tmp_path / "pretrain.yaml"), "--no-resume"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()
    assert str(tmp_path / "run" / "final") in result.output
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "stepz": 3}))
    bad = runner.invoke(pretrain_cmd, [str(tmp_path / "bad.yaml")])
    assert isinstance(bad.exception, InputError) and "unknown key 'stepz'" in str(bad.exception)

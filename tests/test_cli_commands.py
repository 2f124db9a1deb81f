"""Every command of the CLI: each has --help, and each runs once on the bundled sample.

A command that cannot run (a parameter with no option behind it, an import that moved) fails
here; the last test checks that the list of commands run is the whole command tree, so a new
command must be added to it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.ipc as ipc
import yaml
from click.testing import CliRunner

from searchpipe.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "searchpipe" / "data" / "sample"


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command a user runs; a chained group (pipe) is one, its stages are those of
    ``stage``, which are each run on their own."""
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group) and not cmd.chain:
            out += leaf_commands(cmd, (*prefix, name))
        else:
            out.append((*prefix, name))
    return out


def all_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        out.append((*prefix, name))
        if isinstance(cmd, click.Group) and not cmd.chain:  # pipe's stages: those of stage
            out += all_paths(cmd, (*prefix, name))
    return out


def test_every_command_and_subcommand_has_help() -> None:
    runner = CliRunner()
    paths = all_paths(main)
    assert {("train", "reranker"), ("tokenizer", "train"), ("tune",)} <= set(paths)
    for path in paths:
        result = runner.invoke(main, [*path, "--help"], catch_exceptions=False)
        assert result.exit_code == 0 and "Usage:" in result.output, path


def make_beir(folder: Path, n_docs: int = 40, n_train: int = 20) -> Path:
    """A tiny BEIR folder: each query is the first words of a document, its positive."""
    docs = [json.loads(line) for line in (SAMPLE / "corpus.jsonl").read_text().splitlines()]
    docs = docs[:n_docs]
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    queries = [
        {"_id": f"q{i:02d}", "text": " ".join(d["text"].split()[:8])}
        for i, d in enumerate(docs[:n_train])
    ]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    rows = "".join(f"q{i:02d}\t{docs[i]['_id']}\t1\n" for i in range(n_train))
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\n" + rows)
    return folder


def read_run(path: Path) -> pa.Table:
    with pa.memory_map(str(path)) as source:
        return ipc.open_file(source).read_all()


def test_every_command_runs_once_on_the_sample(home: Path) -> None:
    runner = CliRunner()
    ran: list[tuple[str, ...]] = []

    def cli(*args: object, code: int = 0) -> str:
        argv = [str(a) for a in args]
        result = runner.invoke(main, argv, catch_exceptions=False)
        assert result.exit_code == code, f"{argv}: {result.output}"
        path = tuple(a for a in argv if not a.startswith("-"))
        ran.append(next(p for p in leaf_commands(main) if path[: len(p)] == p))
        return result.stdout

    small = home / "small.jsonl"
    lines = (SAMPLE / "corpus.jsonl").read_text().splitlines(keepends=True)
    small.write_text("".join(lines[:60]))
    more = home / "more.jsonl"
    more.write_text("".join(lines[60:70]))

    assert json.loads(cli("index", small, "--name", "s", "--json"))["docs"] == 60
    assert "Flat" in cli("info", "s")
    hits = json.loads(cli("query", "s", "what makes Mars look red", "-k", "3", "--json"))
    assert len(hits["results"][0]["hits"]) == 3
    cli("search", "s", "--queries", SAMPLE / "queries.jsonl", "--output", home / "run.arrow")
    scores = json.loads(cli("eval", home / "run.arrow", "--qrels", SAMPLE / "qrels.tsv", "--json"))
    assert scores["queries"] == 12
    assert json.loads(cli("bench", "s", "-n", "3", "-k", "3", "--json"))["queries"] == 3
    assert json.loads(cli("check", "s", "--json"))["ok"]
    assert json.loads(cli("add", "s", more, "--json"))["added"] == 10
    assert json.loads(cli("delete", "s", "--ids", "d001,d002", "--json"))["deleted"] == 2
    # serve runs until stopped: here it refuses a missing index; tests/test_serve_browser.py
    # runs it for real
    cli("serve", "no-such-index", "--port", "0", code=2)

    # the stage registry: each stage once over files, and a chain in one process
    assert "rerank" in cli("stages") and "requires" in cli("stages", "fuse")
    q = SAMPLE / "queries.jsonl"
    cli("stage", "ingest", "--input", q, "--kind", "query", "--output", home / "q.arrow")
    cli("stage", "read", "--input", home / "q.arrow", "--output", home / "q.jsonl")
    cli("stage", "embed", "--input", home / "q.jsonl", "--output", home / "e.arrow")
    cli(
        "stage",
        "retrieve",
        "--input",
        home / "e.arrow",
        "--index",
        "s",
        "--output",
        home / "d.trec",
    )
    cli(
        "stage",
        "retrieve-bm25",
        "--input",
        home / "q.arrow",
        "--index",
        "s",
        "--output",
        home / "b.trec",
    )
    cli("stage", "fuse", "--input", home / "e.arrow", "--index", "s", "--output", home / "f.arrow")
    cli(
        "stage",
        "best-passage",
        "--input",
        home / "f.arrow",
        "-k",
        "5",
        "--output",
        home / "bp.arrow",
    )
    cli("stage", "cut", "--input", home / "bp.arrow", "-k", "3", "--output", home / "c.arrow")
    cli(
        "stage",
        "snippet",
        "--input",
        home / "c.arrow",
        "--index",
        "s",
        "--output",
        home / "sn.jsonl",
    )
    assert json.loads((home / "sn.jsonl").read_text().splitlines()[0])["title"]
    cli("stage", "lookup", "--input", home / "b.trec", "--index", "s", "--queries", q,
        "--output", home / "l.arrow")  # fmt: skip
    cli("stage", "ingest", "--input", small, "--output", home / "docs.arrow")
    cli(
        "stage",
        "chunk",
        "--input",
        home / "docs.arrow",
        "--tokens",
        "32",
        "--output",
        home / "chunks.arrow",
    )
    assert read_run(home / "chunks.arrow").num_rows > 60
    cli("pipe", q, "-o", home / "p.trec", "ingest", "--kind", "query", "retrieve-bm25",
        "--index", "s", "cut", "-k", "2")  # fmt: skip
    assert len((home / "p.trec").read_text().splitlines()) == 24

    job = {
        "index": {"name": "job", "corpus": str(small)},
        "search": {"queries": str(SAMPLE / "queries.jsonl"), "output": "job-run.arrow", "k": 10},
        "eval": {"qrels": str(SAMPLE / "qrels.tsv"), "metrics": ["ndcg@10"]},
    }
    (home / "job.yaml").write_text(yaml.safe_dump(job))
    assert json.loads(cli("run", home / "job.yaml", "--json"))["eval"]["queries"] == 12

    assert (
        Path(cli("export", "minilm", "--output", home / "exported").strip()) / "config.json"
    ).is_file()
    assert "cosine(contextual, static)" in cli(
        "tokens", "minilm", "The bat flew out.", "--word", "bat"
    )
    cli("tokenizer", "train", small, "--vocab-size", "250", "--output", home / "tok")
    pretrain = {
        "corpus": str(small), "output": str(home / "pre"), "tokenizer": str(home / "tok"),
        "model": {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "max_len": 32},
        "max_len": 32, "batch_size": 4, "steps": 2, "eval_docs": 10, "chunk_docs": 16,
    }  # fmt: skip
    (home / "pretrain.yaml").write_text(yaml.safe_dump(pretrain))
    assert "final" in cli("pretrain", home / "pretrain.yaml")

    beir = make_beir(home / "beir")
    tiny = ["--data", beir, "--max-steps", "2", "--batch-size", "4", "--max-length", "32"]
    mining = ["--negatives", "1", "--depth", "5"]
    out = json.loads(cli("train", "reranker", *tiny, *mining, "--output", home / "rr", "--json"))
    assert out["steps"] == 2
    out = json.loads(cli("train", "embedder", *tiny, *mining, "--output", home / "emb", "--json"))
    assert out["steps"] == 2
    cli("stage", "rerank", "--input", home / "l.arrow", "--model", home / "rr", "--index", "s",
        "--depth", "3", "--output", home / "rr.arrow")  # fmt: skip

    # tune on the dev slice the trainer held out; its config runs as written
    cli("index", beir, "--name", "tiny")
    dev = home / "rr" / "train"
    tuned = home / "tuned.yaml"
    result = json.loads(
        cli("tune", "tiny", "--queries", dev / "dev-queries.jsonl", "--qrels", dev / "dev-qrels.tsv",
            "--rerank", home / "rr", "--depths", "3", "--output", tuned, "--json")
    )  # fmt: skip
    assert Path(result["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = yaml.safe_load(tuned.read_text())["search"]
    assert section == {
        **result["search"],
        **{k: section[k] for k in ("index", "queries", "output")},
    }
    cli(
        "search",
        "--config",
        tuned,
        "--queries",
        beir / "queries.jsonl",
        "--output",
        home / "a.arrow",
    )
    flags = [
        f"--{key.replace('_', '-')}={value}"
        for key, value in section.items()
        if key not in ("index", "queries", "output")
    ]
    cli("search", "tiny", "--queries", beir / "queries.jsonl", "--output", home / "b.arrow", *flags)
    a, b = read_run(home / "a.arrow"), read_run(home / "b.arrow")
    assert a.num_rows > 0 and a.equals(b)

    assert set(ran) == set(leaf_commands(main)), set(leaf_commands(main)) - set(ran)
    assert not os.environ.get("SEARCHPIPE_DEBUG")

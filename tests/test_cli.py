"""The CLI through click's CliRunner: happy paths, JSON on stdout, exit codes for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from searchpipe.cli import main


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str) -> object:
    return runner.invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_every_command_has_help(runner: CliRunner) -> None:
    for cmd in ["index", "query", "search", "eval", "run", "info"]:
        result = invoke(runner, cmd, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output


def test_index_query_search_eval_info(
    home: Path, runner: CliRunner, sample_corpus: Path, sample_queries: Path, sample_qrels: Path
) -> None:
    small = home / "small.jsonl"
    small.write_text("".join(sample_corpus.read_text().splitlines(keepends=True)[:60]))
    result = invoke(runner, "index", small, "--name", "s", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["docs"] == 60
    assert (home / "indexes" / "s" / "manifest.json").exists()

    result = invoke(runner, "query", "s", "what makes Mars look red", "-k", "3", "--json")
    assert result.exit_code == 0
    hits = json.loads(result.stdout)["results"][0]["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3] and hits[0]["doc_id"] == "d011"

    # a session: queries on stdin, one JSON line each, blank lines skipped, models loaded once
    result = runner.invoke(
        main, ["query", "s", "-k", "2", "--json"], input="what makes Mars look red\n\nbats\n"
    )
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["what makes Mars look red", "bats"]
    assert [len(line["hits"]) for line in lines] == [2, 2]
    assert lines[0]["hits"][0]["doc_id"] == "d011"

    result = invoke(
        runner,
        "search",
        "s",
        "--queries",
        sample_queries,
        "--output",
        home / "run.trec",
        "-k",
        "10",
    )
    assert result.exit_code == 0 and (home / "run.trec").exists()

    result = invoke(runner, "eval", home / "run.trec", "--qrels", sample_qrels, "--json")
    assert result.exit_code == 0
    scores = json.loads(result.stdout)
    assert {"ndcg@10", "mrr@10", "recall@100", "queries"} <= scores.keys() and scores[
        "queries"
    ] == 12

    result = invoke(runner, "info", "s")
    assert result.exit_code == 0 and "minilm" in result.output and "Flat" in result.output


def test_run_config(home: Path, runner: CliRunner) -> None:
    cfg = Path(__file__).parents[1] / "configs" / "demo.yaml"
    text = (
        cfg.read_text()
        .replace("../", str(cfg.parent.parent) + "/")
        .replace(str(cfg.parent.parent) + "/runs", str(home / "runs"))
    )
    (home / "demo.yaml").write_text(text)
    result = invoke(runner, "run", home / "demo.yaml", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # hybrid over 100 candidates per retriever, cut to 10
    assert out["index"]["docs"] == 300 and out["eval"]["ndcg@10"] > 0.75
    # fusing two top-10 lists (candidates = k) is what the job did before candidates existed
    (home / "shallow.yaml").write_text(
        text.replace("  k: 10", "  k: 10\n  candidates: 10").replace("sample-run", "shallow-run")
    )
    shallow = json.loads(invoke(runner, "run", home / "shallow.yaml", "--json").stdout)
    assert shallow["eval"]["ndcg@10"] == pytest.approx(0.8042, abs=5e-5)


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "missing"], "no index at"),
        (["query", "missing", "hello"], "no index at"),
        (["index", "nope.jsonl", "--name", "x"], "does not exist"),
        (["index", "bad.jsonl", "--name", "x"], "bad.jsonl:2"),
        (["index", "empty.jsonl", "--name", "x"], "no records"),
        (
            ["index", "ok.jsonl", "--name", "x", "--index-type", "Flatt"],
            "not a FAISS factory string",
        ),
        (["index", "ok.jsonl", "--name", "x", "--on-disk"], "has none; pass an IVF factory"),
        (["index", "ok.jsonl", "--name", "x", "--model", "no/such/folder"], "does not exist"),
        (["index", "ok.jsonl", "--name", "x", "--model", "org/model"], "local model folder"),
        (["run", "unknown-key.yaml"], "unknown key 'index.modle'"),
        (["eval", "nope.arrow", "--qrels", "q.tsv"], "does not exist"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    home: Path, runner: CliRunner, args: list[str], message: str
) -> None:
    (home / "bad.jsonl").write_text('{"_id": "a", "text": "fine"}\n{"_id": "b", "text": \n')
    (home / "empty.jsonl").write_text("")
    (home / "ok.jsonl").write_text('{"_id": "a", "text": "fine"}\n')
    (home / "unknown-key.yaml").write_text(
        "index:\n  name: x\n  corpus: ok.jsonl\n  modle: minilm\n"
    )
    (home / "q.tsv").write_text("q1\td1\t1\n")
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (home / "indexes" / "x").exists() or not any((home / "indexes" / "x").glob("v*")), (
        "no half-written index"
    )


def test_encoder_mismatch_is_refused(home: Path, runner: CliRunner, tmp_path: Path) -> None:
    from searchpipe.api import Searcher
    from searchpipe.errors import InputError
    from searchpipe.models.crossencoder import make_untrained_cross_encoder

    (home / "ok.jsonl").write_text(
        '{"_id": "a", "text": "fine"}\n{"_id": "b", "text": "also fine"}\n'
    )
    assert invoke(runner, "index", home / "ok.jsonl", "--name", "m").exit_code == 0
    other = make_untrained_cross_encoder(
        "minilm", str(tmp_path / "other")
    )  # same shape, other weights
    with pytest.raises(InputError, match="was built with model 'minilm'"):
        Searcher("m", model=other)


def test_python_m_searchpipe_is_the_cli() -> None:
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "searchpipe", "--help"], capture_output=True, text=True, check=True
    )
    assert "index" in out.stdout and "query" in out.stdout


def test_eval_compares_runs_with_a_paired_test(runner: CliRunner, tmp_path: Path) -> None:
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(20))
    )
    good = "".join(f"q{i} Q0 d{i} 1 2.0 x\nq{i} Q0 z{i} 2 1.0 x\n" for i in range(20))
    bad = "".join(f"q{i} Q0 z{i} 1 2.0 x\nq{i} Q0 d{i} 2 1.0 x\n" for i in range(20))
    (tmp_path / "good.trec").write_text(good)
    (tmp_path / "bad.trec").write_text(bad)
    result = invoke(
        runner, "eval", tmp_path / "bad.trec", tmp_path / "good.trec", "--qrels", qrels, "--json"
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    mrr = next(c for c in out["comparisons"] if c["metric"] == "mrr@10")
    assert mrr["delta"] == 0.5 and mrr["significant"] and mrr["wins"] == 20
    text = invoke(
        runner, "eval", tmp_path / "bad.trec", tmp_path / "good.trec", "--qrels", qrels
    ).output
    assert "baseline" in text and "p=" in text

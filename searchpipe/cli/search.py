"""``searchpipe query``, ``search`` and ``bench``: the three ways to run queries.

Each takes every ``SearchSettings`` field as a flag (``--retriever``, ``--candidates``,
``--rerank-depth``, ...) and ``--config FILE`` for a file's ``search:`` section, such as the one
``searchpipe tune`` writes; flags given on the command line override the file.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from searchpipe.cli.common import (
    config_option,
    describe_compute,
    emit,
    given,
    index_dir_option,
    options_from,
    settings_of,
)
from searchpipe.config import EngineConfig, SearchConfig, SearchSettings, read_config, validate
from searchpipe.errors import InputError

#: the fields ``SearchConfig`` adds to ``SearchSettings``, given as NAME, --queries, --output
_RUN_FIELDS = ("index", "queries", "output")


def _settings(config_file: Path | None, flags: dict[str, Any]) -> SearchSettings:
    """Search settings from ``--config`` (its search: section, less the run fields) and flags."""
    raw = read_config(config_file, SearchConfig, "search") if config_file is not None else {}
    for key in _RUN_FIELDS:
        raw.pop(key, None)
    source = str(config_file) if config_file is not None else "command-line options"
    return validate({**raw, **given(flags)}, SearchSettings, source=source)


def _searcher(name: str, index_dir: Path | None, settings: SearchSettings) -> Any:
    from searchpipe.api import Searcher

    return Searcher(name, settings, index_root=index_dir)


@click.command()
@click.argument("name")
@click.argument("queries", nargs=-1)
@options_from(SearchSettings)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON (JSON Lines on stdin).")
@index_dir_option
def query(
    name: str,
    queries: tuple[str, ...],
    config_file: Path | None,
    as_json: bool,
    index_dir: Path | None,
    **flags: Any,
) -> None:
    """Search index NAME for free-text QUERIES; models and index load once.

    With no QUERIES, reads one query per line from stdin and answers each as it arrives (an
    interactive session on a terminal; with --json, one JSON object per line for programs).
    """
    searcher = _searcher(name, index_dir, _settings(config_file, flags))

    def hits_of(text: str) -> list[dict[str, Any]]:
        table = searcher.search(text)
        hits = table.drop_columns(["query_id", "query_text", "doc_row"]).to_pylist()
        for h in hits:  # metadata is stored as JSON text; show it as an object
            h["metadata"] = json.loads(h["metadata"]) if h.get("metadata") else {}
        return hits

    if queries:
        answers = [(text, hits_of(text)) for text in queries]
        if as_json:
            emit({"index": name, "results": [{"query": q, "hits": h} for q, h in answers]})
        else:
            for text, hits in answers:
                _print_hits(text, hits)
        return
    interactive = sys.stdin.isatty()
    if interactive:
        click.echo(f"searching {name}: one query per line, Ctrl-D to end", err=True)
    while True:
        if interactive:
            click.echo("query> ", nl=False, err=True)
        line = sys.stdin.readline()
        if not line:
            break
        text = line.strip()
        if not text:
            continue
        hits = hits_of(text)
        if as_json:
            click.echo(json.dumps({"query": text, "hits": hits}, default=str))
        else:
            _print_hits(text, hits)
        sys.stdout.flush()


def _print_hits(text: str, hits: list[dict[str, Any]]) -> None:
    click.echo(f"\n{text}")
    for h in hits:
        score = h.get("rerank_score") if h.get("rerank_score") is not None else h["score"]
        where = f" §{h['passage'] + 1}" if h.get("passage") else ""
        click.echo(f"  {h['rank']:>3}. [{h['doc_id']}{where}] {score:7.4f}  {h['title']}")
        click.echo(f"       {_snippet(h['text'] or '', h.get('highlights') or [])}")


def _snippet(text: str, spans: list[dict[str, int]], width: int = 180) -> str:
    """About ``width`` characters of ``text`` from a little before its first highlighted term,
    with the terms in bold (plain when the output is not a terminal)."""
    first = spans[0]["start"] if spans else 0
    start = 0 if first < width // 3 else text.rfind(" ", 0, first - width // 4) + 1
    stop = min(len(text), start + width)
    if stop < len(text):
        stop = max(text.rfind(" ", start, stop), start + width // 2)
    out, at = [], start
    for span in spans:
        s, e = max(span["start"], at), min(span["end"], stop)
        if s >= e:
            continue
        out += [text[at:s], click.style(text[s:e], bold=True, fg="yellow")]
        at = e
    out.append(text[at:stop])
    body = " ".join("".join(out).split())
    return ("…" if start > 0 else "") + body + ("…" if stop < len(text) else "")


@click.command()
@click.argument("name", required=False)
@click.option(
    "--queries",
    type=click.Path(path_type=Path),
    default=None,
    help="JSONL, TSV or BEIR queries file/folder.",
)
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Run file: .arrow, .jsonl or .trec.",
)
@options_from(SearchConfig, exclude=_RUN_FIELDS)
@options_from(EngineConfig, flags={"kind": "engine", "address": "ray_address"})
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@index_dir_option
def search(
    name: str | None,
    queries: Path | None,
    output: Path | None,
    config_file: Path | None,
    as_json: bool,
    index_dir: Path | None,
    **flags: Any,
) -> None:
    """Search index NAME with every query in QUERIES and write a run file.

    NAME, --queries and --output may come from --config instead (its search: section).
    --engine ray answers the queries on a Ray cluster (pip install 'searchpipe[ray]').
    """
    from searchpipe.api import search as run_search

    engine_flags = given({k: flags.pop(k) for k in EngineConfig.model_fields})
    engine = validate(engine_flags, EngineConfig, source="command-line options")
    overrides = given({**flags, "index": name, "queries": queries, "output": output})
    if config_file is None:
        for key, hint in (
            ("index", "NAME"),
            ("queries", "--queries FILE"),
            ("output", "--output RUN"),
        ):
            if key not in overrides:
                raise InputError(
                    f"search needs {hint}: searchpipe search NAME --queries FILE --output RUN "
                    "(or --config FILE with a search: section)"
                )
    cfg = settings_of(SearchConfig, overrides, config_file, "search")
    summary = run_search(cfg, index_root=index_dir, engine=engine)
    if as_json:
        emit(summary)
    else:
        click.echo(f"wrote {summary['rows']} hits for {summary['queries']} queries to {cfg.output}")


@click.command()
@click.argument("name")
@click.option(
    "--queries",
    type=click.Path(path_type=Path),
    default=None,
    help="Queries file (default: titles from the index's doc store).",
)
@click.option("-n", "count", type=int, default=100, show_default=True, help="Queries to time.")
@options_from(SearchSettings)
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@index_dir_option
def bench(
    name: str,
    queries: Path | None,
    count: int,
    config_file: Path | None,
    as_json: bool,
    index_dir: Path | None,
    **flags: Any,
) -> None:
    """Time queries on index NAME one by one: p50/p95 and where the time goes."""
    from searchpipe.eval.latency import PARTS, measure
    from searchpipe.models.precision import compute_summary
    from searchpipe.stages.ingest import read_queries

    settings = _settings(config_file, flags)
    searcher = _searcher(name, index_dir, settings)
    if queries is not None:
        texts = read_queries(queries).column("text").to_pylist()[:count]
    else:
        titles = searcher.index.docs.column("title").to_pylist()
        texts = [t for t in titles if t][:count] or searcher.index.docs.column("text").to_pylist()[
            :count
        ]
    result = measure(searcher, texts)
    result["compute"] = compute_summary(settings.device)
    if as_json:
        emit(result)
        return
    click.echo(
        f"{result['queries']} queries, one at a time: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms"
    )
    click.echo(f"  on {describe_compute(result['compute'])}")
    for part in PARTS:
        click.echo(f"  {part:<8} {result['breakdown_p50_ms'][part]:>8.2f} ms (p50)")
    click.echo(
        f"  model forward passes {result['model_forward_fraction']:.1%} of the time; overhead "
        f"outside models, FAISS and BM25 {result['overhead_fraction']:.1%}"
    )


COMMANDS = (query, search, bench)

"""The ``searchpipe`` command line: a thin shell over ``searchpipe.api``.

Results go to stdout (``--json`` for one JSON object), logs and progress bars to stderr.
User mistakes exit with code 2 and a one-line message, runtime failures with code 1; no
traceback is shown for either (set ``SEARCHPIPE_DEBUG=1`` to see one).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from searchpipe.errors import SearchpipeError


class _Group(click.Group):
    """Turns our errors into click errors with the right exit code and no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SearchpipeError as e:
            if os.environ.get("SEARCHPIPE_DEBUG"):
                raise
            err = click.ClickException(str(e))
            err.exit_code = e.exit_code  # type: ignore[misc]  # click keeps it per instance
            raise err from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(130)


def _emit(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


# The options of every command that searches: first stage, fusion and reranking. They reach
# the API as keyword arguments of the same names (Searcher, search()).
search_options = [
    click.option(
        "--retriever",
        type=click.Choice(["auto", "hybrid", "dense", "bm25"]),
        default="auto",
        show_default=True,
        help="First stage; auto is hybrid when the index has BM25.",
    ),
    click.option(
        "--fusion",
        type=click.Choice(["rrf", "weighted"]),
        default="rrf",
        show_default=True,
        help="How hybrid merges dense and BM25.",
    ),
    click.option(
        "--rrf-k", type=int, default=60, show_default=True, help="Reciprocal-rank fusion constant."
    ),
    click.option("--rerank", default=None, help="CrossEncoder model folder to rerank with."),
    click.option(
        "--rerank-depth", type=int, default=20, show_default=True, help="Hits per query to rerank."
    ),
    click.option(
        "--rerank-max-length",
        type=int,
        default=None,
        help="Tokens per (query, doc) pair (default: the model's).",
    ),
]


def with_search_options(f: Any) -> Any:
    for option in reversed(search_options):
        f = option(f)
    return f


index_dir_option = click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding indexes (default: $SEARCHPIPE_HOME/indexes or ./indexes).",
)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="searchpipe")
def main(verbose: int) -> None:
    """searchpipe: semantic search and reranking over Arrow pipelines."""
    # our own progress notes at INFO; other libraries' only when asked (-vv)
    logging.basicConfig(
        level=logging.DEBUG if verbose >= 2 else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("searchpipe").setLevel(logging.DEBUG if verbose else logging.INFO)
    for chatty in ("faiss", "bm25s", "numba", "sentence_transformers", "transformers", "filelock"):
        logging.getLogger(chatty).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)


@main.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Index name (a folder under the index dir).")
@click.option(
    "--model",
    default="minilm",
    show_default=True,
    help="Bi-encoder: 'minilm', a local folder or a Hub name.",
)
@click.option(
    "--index-type",
    default="Flat",
    show_default=True,
    help="FAISS factory string (Flat, HNSW32, IVF256,Flat, ...) or 'auto'.",
)
@click.option(
    "--batch-size",
    type=int,
    default=256,
    show_default=True,
    help="Most documents per forward pass.",
)
@click.option(
    "--token-budget",
    type=int,
    default=16384,
    show_default=True,
    help="Most padded tokens per forward pass.",
)
@click.option(
    "--precision", type=click.Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True
)
@click.option(
    "--bm25/--no-bm25",
    default=True,
    show_default=True,
    help="Also build a BM25 index (hybrid search).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@index_dir_option
def index(
    corpus: Path,
    name: str,
    model: str,
    index_type: str,
    batch_size: int,
    token_budget: int,
    precision: str,
    bm25: bool,
    as_json: bool,
    index_dir: Path | None,
) -> None:
    """Build (or update) index NAME from CORPUS (JSONL, CSV, Parquet, Arrow, or a BEIR folder)."""
    import time

    from searchpipe.api import build_index

    t0 = time.perf_counter()
    idx = build_index(
        corpus=corpus, name=name, model=model, index_type=index_type, batch_size=batch_size,
        token_budget=token_budget, precision=precision, bm25=bm25, index_root=index_dir,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    summary = _index_summary(idx.manifest)
    summary["seconds"] = round(seconds, 2)
    if as_json:
        _emit(summary)
    else:
        click.echo(
            f"index {name}: {summary['docs']} docs, {summary['factory']}, {summary['model']} (version {summary['version']}, {seconds:.1f}s) at {idx.root}"
        )


def _index_summary(m: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": m["name"],
        "version": m["version"],
        "docs": m["doc_count"],
        "model": m["encoder"]["name"],
        "dim": m["encoder"]["dim"],
        "factory": m["factory"],
        "created": m["created"],
    }


@main.command()
@click.argument("name")
@click.argument("queries", nargs=-1)
@click.option("-k", type=int, default=10, show_default=True, help="Hits per query.")
@with_search_options
@click.option("--json", "as_json", is_flag=True, help="Print hits as JSON (JSON Lines on stdin).")
@index_dir_option
def query(
    name: str,
    queries: tuple[str, ...],
    k: int,
    as_json: bool,
    index_dir: Path | None,
    **search: Any,
) -> None:
    """Search index NAME for free-text QUERIES; models and index load once.

    With no QUERIES, reads one query per line from stdin and answers each as it arrives (an
    interactive session on a terminal; with --json, one JSON object per line for programs).
    """
    from searchpipe.api import Searcher

    searcher = Searcher(name, index_root=index_dir, **search)

    def hits_of(text: str) -> list[dict[str, Any]]:
        table = searcher.search(text, k=k)
        return table.drop_columns(["query_id", "query_text", "doc_row"]).to_pylist()

    if queries:
        answers = [(text, hits_of(text)) for text in queries]
        if as_json:
            _emit({"index": name, "results": [{"query": q, "hits": h} for q, h in answers]})
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
        snippet = h["text"][:100] + ("…" if len(h["text"]) > 100 else "")
        click.echo(f"  {h['rank']:>3}. [{h['doc_id']}] {score:7.4f}  {h['title']} — {snippet}")


@main.command()
@click.argument("name")
@click.option(
    "--queries",
    required=True,
    type=click.Path(path_type=Path),
    help="JSONL, TSV or BEIR queries file/folder.",
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Run file: .arrow, .jsonl or .trec.",
)
@click.option("-k", type=int, default=100, show_default=True, help="Hits per query.")
@with_search_options
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@index_dir_option
def search(
    name: str,
    queries: Path,
    output: Path,
    k: int,
    as_json: bool,
    index_dir: Path | None,
    **search: Any,
) -> None:
    """Search index NAME with every query in QUERIES and write a run file."""
    from searchpipe.api import search as run_search

    summary = run_search(
        index=name, queries=queries, output=output, k=k, index_root=index_dir, **search
    )
    if as_json:
        _emit(summary)
    else:
        click.echo(f"wrote {summary['rows']} hits for {summary['queries']} queries to {output}")


@main.command(name="eval")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--qrels", required=True, type=click.Path(path_type=Path), help="BEIR TSV or TREC qrels file."
)
@click.option(
    "--metric",
    "metrics",
    multiple=True,
    help="ranx metric names (default: ndcg@10 mrr@10 recall@100 map).",
)
@click.option("--per-query", is_flag=True, help="Also report each query's scores.")
@click.option(
    "--test",
    "stat_test",
    type=click.Choice(["student", "fisher"]),
    default="student",
    show_default=True,
    help="Paired significance test when comparing runs (the first run is the baseline).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_(
    runs: tuple[Path, ...],
    qrels: Path,
    metrics: tuple[str, ...],
    per_query: bool,
    stat_test: str,
    as_json: bool,
) -> None:
    """Score RUNS (Arrow or TREC run files) against QRELS; compare two or more runs."""
    from searchpipe.evaluate import DEFAULT_METRICS, evaluate, read_qrels

    judged = read_qrels(qrels)
    chosen = metrics or DEFAULT_METRICS
    if len(runs) == 1 or per_query:
        results = {str(r): evaluate(r, judged, chosen, per_query=per_query) for r in runs}
        if as_json:
            _emit(results[str(runs[0])] if len(runs) == 1 else results)
            return
        click.echo(f"{'run':<40}" + "".join(f"{m:>12}" for m in chosen))
        for name, res in results.items():
            click.echo(f"{name[-40:]:<40}" + "".join(f"{res[m]:>12.4f}" for m in chosen))
        click.echo(f"({next(iter(results.values()))['queries']} judged queries)")
        return
    from searchpipe.compare import compare_runs, format_comparison

    comparison = compare_runs([str(r) for r in runs], judged, chosen, stat_test=stat_test)
    if as_json:
        _emit(comparison)
    else:
        click.echo(format_comparison(comparison))


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the job summary as JSON.")
def run(config: Path, as_json: bool) -> None:
    """Run the batch job described by a YAML CONFIG (index, then search and eval)."""
    from searchpipe.api import run_job

    result = run_job(config)
    if as_json:
        _emit(result)
        return
    ix = result["index"]
    click.echo(f"index {ix['name']}: {ix['docs']} docs (version {ix['version']})")
    if "search" in result:
        s = result["search"]
        click.echo(
            f"search: {s['rows']} hits for {s['queries']} queries → {os.path.normpath(s['output'])}"
        )
    if "eval" in result:
        click.echo(
            "eval: "
            + "  ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in result["eval"].items()
            )
        )


@main.command()
@click.argument("name")
@click.option(
    "--queries",
    type=click.Path(path_type=Path),
    default=None,
    help="Queries file (default: titles from the index's doc store).",
)
@click.option("-n", "count", type=int, default=100, show_default=True, help="Queries to time.")
@click.option("-k", type=int, default=10, show_default=True)
@with_search_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@index_dir_option
def bench(
    name: str,
    queries: Path | None,
    count: int,
    k: int,
    as_json: bool,
    index_dir: Path | None,
    **search: Any,
) -> None:
    """Time queries on index NAME one by one: p50/p95 and where the time goes."""
    from searchpipe.api import Searcher
    from searchpipe.bench import PARTS, measure
    from searchpipe.stages.ingest import read_queries

    searcher = Searcher(name, index_root=index_dir, **search)
    if queries is not None:
        texts = read_queries(queries).column("text").to_pylist()[:count]
    else:
        titles = searcher.index.docs.column("title").to_pylist()
        texts = [t for t in titles if t][:count] or searcher.index.docs.column("text").to_pylist()[
            :count
        ]
    result = measure(searcher, texts, k=k)
    if as_json:
        _emit(result)
        return
    click.echo(
        f"{result['queries']} queries, one at a time: p50 {result['p50_ms']} ms, p95 {result['p95_ms']} ms"
    )
    for part in PARTS:
        click.echo(f"  {part:<8} {result['breakdown_p50_ms'][part]:>8.2f} ms (p50)")
    click.echo(
        f"  model forward passes {result['model_forward_fraction']:.1%} of the time; overhead outside models, FAISS and BM25 {result['overhead_fraction']:.1%}"
    )


@main.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@index_dir_option
def info(name: str, as_json: bool, index_dir: Path | None) -> None:
    """Describe index NAME: model, size, FAISS settings, measured recall, files."""
    from searchpipe.index import check_name, read_manifest
    from searchpipe.index import index_dir as resolve_dir

    m = read_manifest(resolve_dir(index_dir) / check_name(name))
    if as_json:
        _emit(m)
        return
    enc = m["encoder"]
    click.echo(f"index      {m['name']} (version {m['version']}, created {m['created']})")
    click.echo(f"docs       {m['doc_count']}")
    click.echo(
        f"model      {enc['name']} (sha256 {enc['weights_sha256'][:12]}…, {enc['pooling']} pooling, normalized={enc['normalize']}, {enc['precision']})"
    )
    click.echo(f"vectors    {enc['dim']}-d, {m['metric']}, factory {m['factory']}")
    if m.get("ann"):
        ann = m["ann"]
        click.echo(
            f"ann        recall@10 {ann['recall@10']} (target {ann['target_recall']}) with {ann['params']}"
        )
    click.echo(f"corpus     {m['corpus']['path']} (sha256 {m['corpus']['sha256'][:12]}…)")
    for rel, meta in m["files"].items():
        click.echo(f"file       {rel} {meta['size']} bytes")


def _register() -> None:
    """Commands that live beside their own API modules (all import their heavy parts lazily)."""
    from searchpipe import cli_encoder, cli_index, cli_train

    for command in (*cli_encoder.COMMANDS, *cli_index.COMMANDS, *cli_train.COMMANDS):
        main.add_command(command)


_register()

if __name__ == "__main__":  # pragma: no cover
    main()

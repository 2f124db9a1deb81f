"""``searchpipe eval``: score run files against qrels; compare runs with a paired test."""

from __future__ import annotations

from pathlib import Path

import click

from searchpipe.cli.common import emit


@click.command(name="eval")
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
    from searchpipe.eval.metrics import DEFAULT_METRICS, evaluate
    from searchpipe.eval.runs import read_qrels

    judged = read_qrels(qrels)
    chosen = metrics or DEFAULT_METRICS
    if len(runs) == 1 or per_query:
        results = {str(r): evaluate(r, judged, chosen, per_query=per_query) for r in runs}
        if as_json:
            emit(results[str(runs[0])] if len(runs) == 1 else results)
            return
        click.echo(f"{'run':<40}" + "".join(f"{m:>12}" for m in chosen))
        for name, res in results.items():
            click.echo(f"{name[-40:]:<40}" + "".join(f"{res[m]:>12.4f}" for m in chosen))
        click.echo(f"({next(iter(results.values()))['queries']} judged queries)")
        return
    from searchpipe.eval.compare import compare_runs, format_comparison

    comparison = compare_runs([str(r) for r in runs], judged, chosen, stat_test=stat_test)
    if as_json:
        emit(comparison)
    else:
        click.echo(format_comparison(comparison))


COMMANDS = (eval_,)

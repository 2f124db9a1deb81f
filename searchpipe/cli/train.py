"""CLI commands for training our own models and tuning search settings.

``searchpipe train reranker|embedder --data BEIR_DIR --output DIR`` and
``searchpipe tune NAME --queries Q --qrels DEV_QRELS --output CONFIG.yaml``: thin wrappers over
``searchpipe.training``; torch, transformers and datasets load inside the commands so
``searchpipe --help`` stays fast. ``tune`` writes a job file whose ``search:`` section
``searchpipe search --config`` and ``searchpipe run`` apply as written, and a PNG of the sweep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from searchpipe.cli.common import emit, given, index_dir_option
from searchpipe.errors import InputError


def _common(f: Any) -> Any:
    options = [
        click.option(
            "--data", required=True, type=click.Path(path_type=Path),
            help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv; with --no-labels any corpus 'index' takes.",
        ),
        click.option(
            "--output", required=True, type=click.Path(file_okay=False, path_type=Path),
            help="Folder for the trained model (work files go to OUTPUT/train/).",
        ),
        click.option("--split", default=None, help="qrels split to train on (default train; never test)."),
        click.option("--no-labels", "no_labels", is_flag=True, default=None, help="No qrels: train on pseudo-queries cut from the corpus (titles, sentences)."),
        click.option("--max-queries", type=int, default=None, help="Sample at most this many (pseudo-)queries (default 20000)."),
        click.option("--init", default=None, help="Starting weights: 'minilm' (default) or a BERT / sentence-transformers folder."),
        click.option("--index", default=None, help="An existing hybrid index of the same corpus to mine negatives from (default: build one under OUTPUT/train)."),
        click.option("--epochs", type=float, default=None, help="Training epochs."),
        click.option("--batch-size", type=int, default=None),
        click.option("--lr", type=float, default=None, help="Peak learning rate."),
        click.option("--max-length", type=int, default=None, help="Tokens per input (pair for the reranker)."),
        click.option("--max-steps", type=int, default=None, help="Stop after this many steps (smoke runs)."),
        click.option("--time-budget", type=float, default=None, help="Minutes of training: the steps are cut to what fits, measured on this machine (default 30; 0: no cap)."),
        click.option("--attention-dropout", type=float, default=None, help="Dropout on attention probabilities while training (default 0: PyTorch's fast attention; BERT's own 0.1 runs its steps 2.3x slower on CPU)."),
        click.option("--negatives", type=int, default=None, help="Mined hard negatives per (query, positive)."),
        click.option("--depth", type=int, default=None, help="Hybrid candidates per query to mine from."),
        click.option("--margin", type=float, default=None, help="False-negative guard: drop candidates the teacher scores >= margin x positive."),
        click.option("--dev-fraction", type=float, default=None, help="Share of the split's queries held out for model selection (default 0.1)."),
        click.option("--seed", type=int, default=None),
        click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="YAML with the same settings (flags override it)."),
        click.option("--resume", is_flag=True, help="Continue the run in OUTPUT (same settings only)."),
        click.option("--overwrite", is_flag=True, help="Empty OUTPUT first and start over."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    ]  # fmt: skip
    for option in reversed(options):
        f = option(f)
    return f


def _config(model: type, config_file: Path | None, **flags: Any) -> Any:
    """The trainer's settings: the YAML file (paths rebased onto its folder), flags on top;
    the mining flags go into its ``mining:`` section."""
    from searchpipe.config import read_config, validate

    raw = read_config(config_file, model) if config_file is not None else {}
    mining = dict(raw.pop("mining", None) or {})
    for key in ("negatives", "depth", "margin"):
        if flags.get(key) is not None:
            mining[key] = flags[key]
        flags.pop(key, None)
    raw.update(given(flags))
    if mining:
        raw["mining"] = mining
    return validate(raw, model, source=str(config_file or "train options"))


def _report(summary: dict[str, Any], as_json: bool) -> None:
    if as_json:
        emit(summary)
        return
    best = summary["dev_best"]
    click.echo(
        f"{summary['kind']} saved to {summary['output']}: {summary['steps']} steps on "
        f"{summary['train_queries']} queries in {summary['seconds']:.0f}s; dev nDCG@10 "
        f"{best if best is None else f'{best:.4f}'} ({summary['dev_queries']} held-out queries)"
    )
    usage = summary.get("usage")
    if usage is not None:
        verdict = (
            f"reranks the top {usage['depth']} with blend {usage['blend']} by default"
            if usage["rerank"]
            else "is saved as 'do not rerank': it would make the ranking worse"
        )
        click.echo(f"the reranker {verdict}: {usage['reason']}")
    if summary.get("kept") == "init":
        click.echo(f"the embedder folder holds its init: {summary['verdict']}")
    elif summary.get("dev_init") is not None:
        click.echo(f"the embedder beat its init: {summary['verdict']}")


@click.group("train")
def train() -> None:
    """Train our own reranker or embedder on a BEIR dataset's train split."""


@train.command("reranker")
@_common
def reranker_cmd(
    config_file: Path | None, resume: bool, overwrite: bool, as_json: bool, **flags: Any
) -> None:
    """Fine-tune a cross-encoder on the qrels with hard negatives mined from our hybrid index.

    The output folder is a sentence-transformers CrossEncoder: pass it to --rerank.
    """
    from searchpipe.training.train import RerankerTrainConfig, train_reranker

    cfg = _config(RerankerTrainConfig, config_file, **flags)
    _report(train_reranker(cfg, resume=resume, overwrite=overwrite), as_json)


@train.command("embedder")
@_common
def embedder_cmd(
    config_file: Path | None, resume: bool, overwrite: bool, as_json: bool, **flags: Any
) -> None:
    """Fine-tune the bi-encoder contrastively (in-batch + mined hard negatives).

    The output folder is a SentenceTransformer model: pass it to `searchpipe index --model`.
    """
    from searchpipe.training.train import EmbedderTrainConfig, train_embedder

    cfg = _config(EmbedderTrainConfig, config_file, **flags)
    _report(train_embedder(cfg, resume=resume, overwrite=overwrite), as_json)


@click.command("tune")
@click.argument("name")
@click.option(
    "--queries",
    required=True,
    type=click.Path(path_type=Path),
    help="Dev queries (JSONL/TSV/BEIR).",
)
@click.option(
    "--qrels",
    required=True,
    type=click.Path(path_type=Path),
    help="Dev qrels (never the test qrels).",
)
@click.option("--rerank", default=None, help="CrossEncoder folder: also sweep the rerank depth.")
@click.option("--depths", default="20,50,100", show_default=True, help="Rerank depths to try.")
@click.option("--rrf-ks", default="10,30,60,100", show_default=True, help="RRF constants to try.")
@click.option(
    "--blends",
    default="0,0.5,1,2",
    show_default=True,
    help="Rerank blends to try: weight of the first-stage rank in the reranked order.",
)
@click.option(
    "-k", "--candidates", "k", type=int, default=100, show_default=True,
    help="Candidates per retriever the sweep evaluates (the written config's candidates).",
)  # fmt: skip
@click.option(
    "--max-ms", type=float, default=None, help="Only choose settings within this ms/query."
)
@click.option(
    "--output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML config to write (a search: section); the plot goes beside it as .png.",
)
@click.option("--json", "as_json", is_flag=True, help="Print every row and the choice as JSON.")
@index_dir_option
def tune(
    name: str, queries: Path, qrels: Path, rerank: str | None, depths: str, rrf_ks: str,
    blends: str, k: int, max_ms: float | None, output: Path, as_json: bool,
    index_dir: Path | None,
) -> None:  # fmt: skip
    """Sweep fusion, its weights and RRF k, rerank depth and blend on dev QRELS; write the best.

    The written file runs as it is: searchpipe search --config FILE (or searchpipe run FILE).
    """
    from searchpipe.training.sweep import format_table, plot, sweep, write_config

    def numbers(text: str, what: str, kind: type, low: float) -> tuple[Any, ...]:
        try:
            values = tuple(kind(v) for v in text.split(",") if v.strip())
        except ValueError:
            raise InputError(f"--{what} takes comma-separated numbers, got {text!r}") from None
        if not values or min(values) < low:
            raise InputError(f"--{what} needs numbers >= {low}, got {text!r}")
        return values

    if k < 1:
        raise InputError(f"--candidates must be at least 1, got {k}")
    result = sweep(
        name, queries, qrels, rerank=rerank, k=k, depths=numbers(depths, "depths", int, 1),
        rrf_ks=numbers(rrf_ks, "rrf-ks", int, 1), blends=numbers(blends, "blends", float, 0),
        max_ms=max_ms, index_root=index_dir,
    )  # fmt: skip
    path = write_config(result["search"], output, queries, name)
    picture = plot(result["rows"], result["best"], path.with_suffix(".png"))
    if as_json:
        emit({**result, "config": str(path), "plot": str(picture)})
        return
    click.echo(format_table(result["rows"], result["best"]))
    click.echo(
        f"({result['queries']} dev queries; ms/q measured in batch) wrote {path} and {picture}"
    )


COMMANDS = (train, tune)

"""``searchpipe run CONFIG.yaml``: a batch job (build, search, evaluate) described in YAML."""

from __future__ import annotations

import os
from pathlib import Path

import click

from searchpipe.cli.common import emit


@click.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the job summary as JSON.")
@click.option(
    "--allow-import",
    is_flag=True,
    help="Let a pipeline: name stages of your own code as module:Class (imports that module).",
)
def run(config: Path, as_json: bool, allow_import: bool) -> None:
    """Run the batch job described by a YAML CONFIG: index, search, pipeline and eval sections
    (each optional; a search: alone, as tune writes it, searches an existing index; a
    pipeline: lists stages by name, see searchpipe stages)."""
    from searchpipe.api import run_job

    result = run_job(config, allow_import=allow_import)
    if as_json:
        emit(result)
        return
    if "index" in result:
        ix = result["index"]
        click.echo(f"index {ix['name']}: {ix['docs']} docs (version {ix['version']})")
    if "search" in result:
        s = result["search"]
        click.echo(
            f"search: {s['rows']} hits for {s['queries']} queries → {os.path.normpath(s['output'])}"
        )
    if "pipeline" in result:
        p = result["pipeline"]
        where = f" → {os.path.normpath(p['output'])}" if "output" in p else ""
        click.echo(f"pipeline {' → '.join(p['stages'])}: {p['rows']} rows{where}")
    if "eval" in result:
        click.echo(
            "eval: "
            + "  ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in result["eval"].items()
            )
        )


COMMANDS = (run,)

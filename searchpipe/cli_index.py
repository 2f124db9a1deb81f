"""``searchpipe check``, ``add`` and ``delete``: verify an index, update it in place.

Thin commands over ``searchpipe.index.check_index`` and ``searchpipe.update``; registered
on the root group with ``main.add_command``. Errors are ``SearchpipeError`` subclasses, which
the root group turns into exit codes (corruption found by ``check``: exit 1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from searchpipe.errors import InputError

index_dir_option = click.option(
    "--index-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding indexes (default: $SEARCHPIPE_HOME/indexes or ./indexes).",
)
keep_option = click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Committed versions to keep on disk (older ones are removed).",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")


def _emit(obj: dict[str, Any]) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


@click.command()
@click.argument("name")
@json_option
@index_dir_option
def check(name: str, as_json: bool, index_dir: Path | None) -> None:
    """Verify every byte of index NAME against its checksums; exit 1 naming a damaged file."""
    from searchpipe.index import check_index

    report = check_index(name, index_dir)
    if as_json:
        _emit(report)
    else:
        click.echo(
            f"index {report['name']} version {report['version']}: {report['docs']} docs, "
            f"{report['files']} files, {report['bytes']} bytes verified, ok"
        )


@click.command()
@click.argument("name")
@click.argument("more_corpus", type=click.Path(path_type=Path))
@keep_option
@json_option
@index_dir_option
def add(name: str, more_corpus: Path, keep: int, as_json: bool, index_dir: Path | None) -> None:
    """Add the documents of MORE_CORPUS to index NAME (new ids added, changed ones replaced).

    Unchanged documents are skipped and only new or changed ones are embedded, with the
    index's own model.
    """
    from searchpipe.update import add_documents

    result = add_documents(name, more_corpus, index_dir, keep=keep)
    if as_json:
        _emit(result)
        return
    state = f"version {result['version']}" if result["committed"] else "nothing to commit"
    click.echo(
        f"index {name}: {result['added']} added, {result['updated']} updated, "
        f"{result['unchanged']} unchanged ({state})"
    )


@click.command()
@click.argument("name")
@click.option(
    "--ids",
    multiple=True,
    help="Doc id(s) to delete: repeat the option or separate ids by commas (ids holding a comma: use --ids-file).",
)
@click.option(
    "--ids-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="File of doc ids to delete, one per line.",
)
@keep_option
@json_option
@index_dir_option
def delete(
    name: str,
    ids: tuple[str, ...],
    ids_file: Path | None,
    keep: int,
    as_json: bool,
    index_dir: Path | None,
) -> None:
    """Delete documents from index NAME by id (doc store, dense and BM25 together)."""
    from searchpipe.update import delete_documents, read_ids_file

    wanted = [p.strip() for raw in ids for p in raw.split(",") if p.strip()]
    if ids_file is not None:
        wanted += read_ids_file(ids_file)
    if not wanted:
        raise InputError("no document ids to delete; pass --ids ID ... or --ids-file FILE")
    result = delete_documents(name, wanted, index_dir, keep=keep)
    if as_json:
        _emit(result)
        return
    state = f"version {result['version']}" if result["committed"] else "nothing to commit"
    click.echo(
        f"index {name}: {result['deleted']} deleted, {result['not_found']} not found ({state})"
    )


COMMANDS = (check, add, delete)

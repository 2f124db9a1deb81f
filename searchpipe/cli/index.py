"""``searchpipe index``, ``info``, ``check``, ``add`` and ``delete``: make, describe, verify and
update indexes. Thin commands over ``searchpipe.api`` and ``searchpipe.index``; corruption
found by ``check`` exits 1 naming the damaged file.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from searchpipe.cli.common import (
    describe_compute,
    emit,
    given,
    index_dir_option,
    json_option,
    options_from,
)
from searchpipe.config import EngineConfig, IndexConfig, validate
from searchpipe.errors import InputError

SHOWN_SHARDS = 10  # info lists this many shards; --json lists all

keep_option = click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=2,
    show_default=True,
    help="Committed versions to keep on disk (older ones are removed).",
)


@click.command()
@click.argument("corpus", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="Index name (a folder under the index dir).")
@options_from(IndexConfig, exclude=("name", "corpus"))
@options_from(EngineConfig, flags={"kind": "engine", "address": "ray_address"})
@json_option
@index_dir_option
def index(corpus: Path, name: str, as_json: bool, index_dir: Path | None, **flags: Any) -> None:
    """Build (or update) index NAME from CORPUS: JSONL, CSV, Parquet, Arrow, a BEIR folder, or
    a folder of documents (.txt, .md, .html, .pdf, .docx; unreadable files are skipped and
    listed). --engine ray embeds on a Ray cluster (pip install 'searchpipe[ray]')."""
    from searchpipe.api import build_index

    engine_flags = given({k: flags.pop(k) for k in EngineConfig.model_fields})
    engine = validate(engine_flags, EngineConfig, source="command-line options")
    t0 = time.perf_counter()
    idx = build_index(corpus=corpus, name=name, index_root=index_dir, engine=engine, **given(flags))
    seconds = time.perf_counter() - t0
    summary = index_summary(idx.manifest)
    summary["seconds"] = round(seconds, 2)
    skipped = idx.manifest.get("corpus", {}).get("skipped", [])
    summary["skipped"] = skipped
    cut = idx.manifest.get("truncation")
    summary["truncation"] = cut
    if as_json:
        emit(summary)
    else:
        split = ""
        if summary["passages"] != summary["docs"]:
            split = (
                f" in {summary['passages']} passages of at most {summary['chunk_tokens']} tokens"
            )
        click.echo(
            f"index {name}: {summary['docs']} docs{split}, {summary['factory']}, "
            f"{summary['model']} (version {summary['version']}, {seconds:.1f}s) at {idx.root}"
        )
    if cut and cut["docs"]:
        unit = "passages" if summary["chunk_tokens"] else "documents"
        fix = "" if summary["chunk_tokens"] else "; index without --no-chunk to split them"
        click.echo(
            f"note: {cut['docs']} of {cut['of']} {unit} are longer than the model's "
            f"{cut['max_length']} tokens; {cut['tokens_cut']} tokens past that were cut and only "
            f"BM25 searches them{fix}",
            err=True,
        )
    if skipped:
        click.echo(f"skipped {len(skipped)} file(s) that could not be read:", err=True)
        for s in skipped:
            click.echo(f"  {s['file']}: {s['reason']}", err=True)


def index_summary(m: dict[str, Any]) -> dict[str, Any]:
    """What ``index`` prints of a manifest."""
    return {
        "name": m["name"],
        "version": m["version"],
        "docs": m["doc_count"],
        "passages": m.get("passage_count", m["doc_count"]),
        "chunk_tokens": (m.get("chunking") or {}).get("tokens"),
        "model": m["encoder"]["name"],
        "dim": m["encoder"]["dim"],
        "factory": m["factory"],
        "created": m["created"],
    }


@click.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
@index_dir_option
def info(name: str, as_json: bool, index_dir: Path | None) -> None:
    """Describe index NAME: model, size, FAISS settings, measured recall, files."""
    from searchpipe.index.store import check_name, read_manifest
    from searchpipe.index.store import index_dir as resolve_dir
    from searchpipe.models.precision import compute_summary

    m = read_manifest(resolve_dir(index_dir) / check_name(name))
    if as_json:
        emit(m)
        return
    enc = m["encoder"]
    click.echo(f"index      {m['name']} (version {m['version']}, created {m['created']})")
    click.echo(f"docs       {m['doc_count']}")
    chunking = m.get("chunking") or {}
    if chunking.get("tokens"):
        click.echo(
            f"passages   {m.get('passage_count')} (at most {chunking['tokens']} tokens, "
            f"{chunking['overlap']} overlap)"
        )
    else:
        click.echo("passages   off (one row per document)")
    click.echo(
        f"model      {enc['name']} (sha256 {enc['weights_sha256'][:12]}…, {enc['pooling']} "
        f"pooling, normalized={enc['normalize']}, {enc['precision']})"
    )
    click.echo(f"vectors    {enc['dim']}-d, {m['metric']}, factory {m['factory']}")
    if m.get("truncation"):
        t = m["truncation"]
        unit = "passages" if chunking.get("tokens") else "docs"
        click.echo(
            f"truncation {t['docs']} of {t['of']} {unit} longer than {t['max_length']} tokens "
            f"({t['tokens_cut']} tokens cut)"
        )
    if m.get("ann"):
        ann = m["ann"]
        click.echo(
            f"ann        recall@10 {ann['recall@10']} (target {ann['target_recall']}) with {ann['params']}"
        )
    click.echo(f"corpus     {m['corpus']['path']} (sha256 {m['corpus']['sha256'][:12]}…)")
    engine = m.get("engine") or {"kind": "local"}
    if engine["kind"] == "ray":
        shards = engine["shards"]
        size = f"{engine['shard_rows']} rows each" if engine["shard_rows"] else "one per batch"
        click.echo(
            f"engine     ray, {engine['workers']} worker(s) of {engine['cpus_per_worker']} CPU "
            f"at {engine['address']}, {len(shards)} shard(s) ({size}, {engine['reused_shards']} "
            f"reused) in {engine['work_dir']}"
        )
        for s in shards[:SHOWN_SHARDS]:
            click.echo(f"shard      {s['name']} {s['rows']} rows (sha256 {s['sha256'][:12]}…)")
        if len(shards) > SHOWN_SHARDS:
            click.echo(f"shard      … {len(shards) - SHOWN_SHARDS} more (info --json lists all)")
    else:
        click.echo(f"engine     {engine['kind']}")
    click.echo(f"built on   {describe_compute(m.get('compute'))}")
    click.echo(f"this host  {describe_compute(compute_summary())}")
    for rel, meta in m["files"].items():
        click.echo(f"file       {rel} {meta['size']} bytes")


@click.command()
@click.argument("name")
@json_option
@index_dir_option
def check(name: str, as_json: bool, index_dir: Path | None) -> None:
    """Verify every byte of index NAME against its checksums; exit 1 naming a damaged file."""
    from searchpipe.index import check_index

    report = check_index(name, index_dir)
    if as_json:
        emit(report)
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
    from searchpipe.api import add_documents

    result = add_documents(name, more_corpus, index_dir, keep=keep)
    if as_json:
        emit(result)
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
    from searchpipe.api import delete_documents, read_ids_file

    wanted = [p.strip() for raw in ids for p in raw.split(",") if p.strip()]
    if ids_file is not None:
        wanted += read_ids_file(ids_file)
    if not wanted:
        raise InputError("no document ids to delete; pass --ids ID ... or --ids-file FILE")
    result = delete_documents(name, wanted, index_dir, keep=keep)
    if as_json:
        emit(result)
        return
    state = f"version {result['version']}" if result["committed"] else "nothing to commit"
    click.echo(
        f"index {name}: {result['deleted']} deleted, {result['not_found']} not found ({state})"
    )


COMMANDS = (index, info, check, add, delete)

"""``searchpipe stages``, ``stage`` and ``pipe``: the stage registry on the command line.

Every registered stage (``searchpipe.stages.registry``) is a subcommand of ``stage`` (one
stage over one file) and of ``pipe`` (stages chained in one process, click's ``chain=True``),
with one option per field of its settings model, so the names are those of a YAML
``pipeline:`` section::

    searchpipe stage embed --input queries.arrow --output embedded.arrow --model minilm
    searchpipe pipe queries.jsonl -o run.trec ingest --kind query embed retrieve --index scifact -k 100
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from searchpipe.cli.common import emit, given, index_dir_option, options_from
from searchpipe.stages.registry import REGISTRY, StageSpec

#: stages whose ``path`` setting is the command's --input (sources) or --output (write)
_READS = ("ingest", "read")
_FILE = ("path",)


def _type_name(annotation: Any) -> str:
    """``int | None`` → "int or none", ``Literal['a', 'b']`` → "a|b", ``list[str]`` → "list of str"."""
    import types
    import typing

    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args).replace("NoneType", "none")
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _describe(spec: StageSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "help": spec.help,
        "requires": list(spec.requires),
        "provides": list(spec.provides),
        "settings": {
            name: {
                "type": _type_name(f.annotation),
                "default": None if f.is_required() else f.default,
                "required": f.is_required(),
                "description": f.description or "",
            }
            for name, f in spec.settings.model_fields.items()
        },
    }


@click.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def stages(name: str | None, as_json: bool) -> None:
    """List the pipeline stages: the columns each requires and provides, and its settings.
    With NAME, show that one."""
    from searchpipe.errors import InputError

    if name is not None and name not in REGISTRY:
        raise InputError(f"unknown stage {name!r}; the stages are {', '.join(sorted(REGISTRY))}")
    chosen = [REGISTRY[name]] if name else list(REGISTRY.values())
    described = [_describe(s) for s in chosen]
    if as_json:
        emit(described if name is None else described[0])
        return
    for d in described:
        click.echo(f"{d['name']:14s} {d['help']}")
        if name is None:
            continue
        click.echo(f"  requires  {', '.join(d['requires']) or '-'}")
        click.echo(f"  provides  {', '.join(d['provides']) or '-'}")
        for key, f in d["settings"].items():
            default = "required" if f["required"] else f"default {f['default']!r}"
            click.echo(f"  {key:12s} {f['type']} ({default}) {f['description']}")
    if name is None:
        click.echo("\n`searchpipe stages NAME` shows a stage's columns and settings.")


def _spec_command(spec: StageSpec, for_chain: bool) -> click.Command:
    exclude = _FILE if spec.name in (*_READS, "write") else ()

    def callback(**flags: Any) -> Any:
        settings = given(flags)
        if for_chain:
            return {spec.name: settings}
        return _run_one(spec.name, settings)

    command = click.Command(spec.name, callback=callback, help=spec.help)
    options_from(spec.settings, exclude=exclude)(command)
    if not for_chain:
        click.option(
            "--input", "input_path", type=click.Path(path_type=Path), default=None,
            help="Input file (Arrow, Parquet, JSONL or TREC run); for ingest, the corpus or queries.",
        )(command)  # fmt: skip
        click.option(
            "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
            required=True, help="Output file: .arrow, .parquet, .jsonl or .trec.",
        )(command)  # fmt: skip
        index_dir_option(command)
    return command


def _run_one(name: str, settings: dict[str, Any]) -> None:
    input_path = settings.pop("input_path", None)
    output_path = settings.pop("output_path")
    index_dir = settings.pop("index_dir", None)
    specs = _with_files(input_path, [{name: settings}], output_path)
    _stream(specs, index_dir)


def _with_files(
    input_path: Path | None, specs: list[dict[str, Any]], output_path: Path
) -> list[dict[str, Any]]:
    """The file reading and writing around ``specs``: IN is the path of a first ingest or read
    stage, else read as it is; OUT is written by a write stage."""
    first = next(iter(specs[0])) if specs else None
    if input_path is not None:
        if first in _READS:
            specs[0] = {first: {**(specs[0][first] or {}), "path": str(input_path)}}
        else:
            specs = [{"read": {"path": str(input_path)}}, *specs]
    return [*specs, {"write": {"path": str(output_path)}}]


def _stream(specs: list[dict[str, Any]], index_dir: Path | None) -> None:
    from searchpipe.api.pipelines import stream_pipeline

    rows = 0
    for batch in stream_pipeline(specs, index_root=index_dir):
        rows += batch.num_rows
    click.echo(f"{rows} rows → {specs[-1]['write']['path']}", err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def stage() -> None:
    """Run one stage over a file: searchpipe stage NAME --input IN --output OUT [SETTINGS]."""


class _Chain(click.Group):
    """A chained group that takes its own options after IN as well (``pipe IN -o OUT ...``)."""

    own = ("-o", "--output", "--index-dir")

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = list(args)
        if args and not args[0].startswith("-"):
            moved = []
            while len(args) >= 3 and args[1] in self.own:
                moved += args[1:3]
                del args[1:3]
            args = moved + args
        return super().parse_args(ctx, args)


@click.group(cls=_Chain, chain=True, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("input_path", metavar="IN", type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", "output_path", type=click.Path(dir_okay=False, path_type=Path),
    required=True, help="Output file: .arrow, .parquet, .jsonl or .trec.",
)  # fmt: skip
@index_dir_option
def pipe(input_path: Path, output_path: Path, index_dir: Path | None) -> None:
    """Chain stages over IN in one process, streaming batches: searchpipe pipe IN -o OUT
    STAGE [SETTINGS] STAGE [SETTINGS] ... (IN is an ingest stage's corpus when the chain
    starts with ingest, else read as it is)."""


@pipe.result_callback()
def _run_chain(
    specs: list[dict[str, Any]], input_path: Path, output_path: Path, index_dir: Path | None
) -> None:
    from searchpipe.errors import InputError

    if not specs:
        raise InputError("pipe: name at least one stage after IN -o OUT (see searchpipe stages)")
    _stream(_with_files(input_path, list(specs), output_path), index_dir)


for _spec in REGISTRY.values():
    if _spec.name != "write":
        stage.add_command(_spec_command(_spec, for_chain=False))
        pipe.add_command(_spec_command(_spec, for_chain=True))

COMMANDS = (stages, stage, pipe)

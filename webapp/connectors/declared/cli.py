"""`flask connectors ...`: what the author of a declared connector file needs (docs/CONNECTORS.md).

- `validate FILE`: the schema and the checks a schema cannot make, with the line of each problem.
- `preview FILE`: runs the file's reads against the real API (or a local one) and prints the
  requests made, the records parsed and the state that would be checkpointed. It stores
  nothing: no connection, no run, no record; credentials come on standard input and are
  never printed.
"""
import json
import sys

import click
from flask import current_app
from flask.cli import AppGroup

from ...cli import _fail, _params

connectors_cli = AppGroup("connectors", help="Check and try out declared connector files.")


@connectors_cli.command("list")
def list_command():
    """Every connector, Python or declared, and every declared file that was refused."""
    from .. import load_all
    from ..base import REGISTRY
    from . import register_all

    load_all()
    for name, cls in sorted(REGISTRY.items()):
        click.echo(f"{name:20} {getattr(cls, 'source', '') or 'python'}  {cls.title}")
    for problem in register_all():
        click.secho(f"refused: {problem}", fg="red")


@connectors_cli.command("validate")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
def validate_command(path):
    """Check connector file PATH; exit 1 and name each problem (line, field) if it is refused."""
    cls = _load_or_exit(path)
    streams = ", ".join(s.name for s in cls.streams)
    click.echo(f"{path}: connector {cls.name!r} ({cls.title}) is valid; streams {streams}; "
               f"modes {', '.join(cls.supported_modes)}")


@connectors_cli.command("preview")
@click.argument("path", type=click.Path(exists=True, dir_okay=False))
@click.option("--setting", "setting_pairs", multiple=True, help="a setting, key=value (JSON values are parsed)")
@click.option("--credentials-stdin", is_flag=True, help="read the credentials as a JSON object from standard input")
@click.option("--stream", "streams", multiple=True, help="only these streams (default: all)")
@click.option("--pages", type=click.IntRange(min=1), default=2, show_default=True, help="pages read per stream")
@click.option("--mode", type=click.Choice(["full", "incremental", "range"]), default="full", show_default=True)
@click.option("--param", "param_pairs", multiple=True, help="run parameter key=value (since, until...)")
@click.option("--show", type=click.IntRange(min=0), default=2, show_default=True, help="records printed per page")
def preview_command(path, setting_pairs, credentials_stdin, streams, pages, mode, param_pairs, show):
    """Read a few pages with connector file PATH and print what a run would do; store nothing."""
    from ..base import ReadRequest
    from ..errors import BadRecord, SyncError
    from .preview import PreviewServices

    cls = _load_or_exit(path)
    settings = {key: _value(value) for key, value in _params(setting_pairs).items()}
    credentials = {}
    if credentials_stdin:
        try:
            credentials = json.loads(sys.stdin.read() or "{}")
        except ValueError:
            _fail("the credentials on standard input are not a JSON object")
        if not isinstance(credentials, dict):
            _fail("the credentials on standard input are not a JSON object")
    services = PreviewServices(config=dict(current_app.config), echo=lambda line: click.echo(f"    {line}"),
                               credentials=credentials)
    try:
        connector = cls(settings, credentials, services)
    except SyncError as exc:
        _fail(str(exc))
    request = ReadRequest(mode, _params(param_pairs))
    for name in streams or connector.default_streams():
        try:
            stream = connector.stream(name)
        except SyncError as exc:
            _fail(str(exc))
        click.secho(f"stream {name}", bold=True)
        state, read, cursor = None, 0, None
        for number in range(1, pages + 1):
            click.echo(f"  page {number}")
            try:
                page = connector.read_page(stream, request, state)
            except SyncError as exc:
                _fail(f"stream {name}, page {number}: {exc}")
            good = []
            for record in page.records:
                try:
                    stream.key_of(record)
                    connector.validate(stream, record)
                    good.append(record)
                except BadRecord as exc:
                    click.secho(f"    skipped: {exc}", fg="yellow")
            for bad in page.bad_records:
                click.secho(f"    skipped: {bad}", fg="yellow")
            read += len(good)
            click.echo(f"    records: {len(good)} parsed" + (f" of {page.total}" if page.total is not None else ""))
            for record in good[:show]:
                click.echo(f"      {json.dumps(record, default=str)[:400]}")
            if stream.cursor_field:
                values = [r.get(stream.cursor_field) for r in good if isinstance(r, dict)]
                if good and all(v is None for v in values):
                    click.secho(f"    warning: no record has the cursor field {stream.cursor_field!r}", fg="yellow")
                present = [v for v in values if v is not None]
                cursor = max([cursor, *present], key=lambda v: (v is not None, str(v))) if present else cursor
            click.echo(f"    checkpoint: {json.dumps(page.next_state, default=str)[:400]}")
            state = page.next_state
            if state is None:
                break
        ending = "the stream is finished" if state is None else f"more pages follow (stopped after {pages})"
        click.echo(f"  {read} records in {number} page(s); {ending}"
                   + (f"; cursor that would be stored: {json.dumps(cursor)}" if stream.cursor_field else ""))
    click.echo("nothing was stored")


def _load_or_exit(path):
    """The connector class of the file, or every problem (line, field) on stderr and exit 1."""
    from . import FileRefused, load_file

    try:
        return load_file(path)
    except FileRefused as exc:
        for problem in exc.problems:
            click.secho(str(problem), fg="red", err=True)
        sys.exit(1)


def _value(text):
    """A --setting value: JSON when it parses (numbers, lists, objects), else the text."""
    try:
        return json.loads(text)
    except ValueError:
        return text

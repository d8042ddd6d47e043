"""The ``cas`` command line: a thin layer over the Python API.

Every command calls the library; one handler turns any CasError (and click's usage errors) into
a single ``cas: error:`` line on stderr and the exit status SPEC promises.
"""

from __future__ import annotations

import datetime
import json
import logging
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from .errors import CasError, UsageError
from .store import Entry, Store

log = logging.getLogger("cas")


class CasGroup(click.Group):
    """A click group whose every error is one ``cas: error:`` line and a stable exit status."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            status = super().main(
                args, prog_name or "cas", complete_var, standalone_mode=False, **extra
            )
        except click.exceptions.Abort:
            _fail("interrupted", 130)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except CasError as error:
            _fail(str(error), error.exit_status)
        except BrokenPipeError:
            sys.stderr.close()  # a closed pipe (`cas cat | head`) is not an error
            sys.exit(0)
        if not standalone_mode:
            return status
        sys.exit(status if isinstance(status, int) else 0)


def _fail(message: str, status: int) -> None:
    click.echo(f"cas: error: {' '.join(message.split())}", err=True)
    sys.exit(status)


class Context:
    """What the global options decided; opens the store on first use."""

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._store: Store | None = None

    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.root)
            click.get_current_context().call_on_close(self._store.close)
        return self._store


pass_context = click.make_pass_decorator(Context)


@click.group(cls=CasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=True),
    help="Store root (default: $CAS_HOME, else the user cache folder).",
)
@click.option("-v", "--verbose", count=True, help="Say more (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.version_option(package_name="cas", prog_name="cas")
@click.pass_context
def cli(ctx: click.Context, root: Path | None, verbose: int, quiet: bool) -> None:
    """A content-addressed store for test fixtures and other large files."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[
        min(verbose, 2)
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cas: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    ctx.obj = Context(root)


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--name", help="Name the stored content (one file only).")
@pass_context
def put(context: Context, files: tuple[str, ...], name: str | None) -> None:
    """Store FILE… (or - for stdin); print "<digest>  <file>" for each."""
    if name is not None and len(files) != 1:
        raise UsageError("--name needs exactly one file")
    store = context.store()
    for file in files:
        digest = store.put(sys.stdin.buffer if file == "-" else Path(file), name=name)
        click.echo(f"{digest}  {file}")


@cli.command()
@click.argument("ref")
@pass_context
def path(context: Context, ref: str) -> None:
    """Print the path of the blob REF (a digest or a name)."""
    click.echo(str(context.store().path(ref)))


@cli.command()
@click.argument("ref")
@pass_context
def cat(context: Context, ref: str) -> None:
    """Write the content of REF to stdout."""
    with context.store().open_blob(ref) as blob:
        shutil.copyfileobj(blob, sys.stdout.buffer, 1 << 20)
    sys.stdout.buffer.flush()


@cli.command()
@click.argument("name")
@click.argument("ref")
@pass_context
def tag(context: Context, name: str, ref: str) -> None:
    """Point NAME at the blob REF."""
    context.store().tag(name, ref)


@cli.command()
@click.argument("name")
@pass_context
def untag(context: Context, name: str) -> None:
    """Remove NAME; its blob stays."""
    context.store().untag(name)


@cli.command("rm")
@click.argument("refs", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Remove even what is leased.")
@pass_context
def remove(context: Context, refs: tuple[str, ...], force: bool) -> None:
    """Remove each REF: a name (and its blob if no other name has it), or a digest."""
    store = context.store()
    for ref in refs:
        store.remove(ref, force=force)


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "digest": entry.digest,
        "size": entry.size,
        "last_access": entry.last_access,
        "pinned": entry.pinned,
        "present": entry.present,
        "source": entry.source,
    }


def _human_size(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def list_entries(context: Context, as_json: bool) -> None:
    """List names and blobs with size, last access, and pin state."""
    entries = context.store().entries()
    if as_json:
        click.echo(json.dumps([_entry_json(entry) for entry in entries], indent=2))
        return
    state: Callable[[Entry], str] = lambda e: ",".join(  # noqa: E731
        flag for flag, on in (("pinned", e.pinned), ("evicted", not e.present)) if on
    ) or "-"
    for entry in entries:
        click.echo(
            f"{entry.digest[:12]}  {_human_size(entry.size):>10}  {_when(entry.last_access)}"
            f"  {state(entry):<8}  {entry.name or ''}".rstrip()
        )


def main() -> None:
    """Console entry point."""
    cli.main(prog_name="cas")


if __name__ == "__main__":
    main()

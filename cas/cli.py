"""The ``cas`` command line: a thin layer over the Python API.

Every command calls the library; one handler turns any CasError (and click's usage errors) into
a single ``cas: error:`` line on stderr and the exit status SPEC promises (cas/console.py). How
results look is cas/render.py. The upkeep commands (gc, maintain, verify, stats) are in
cas/cli_maintenance.py and ``cas manifest`` in cas/cli_manifest.py; this module adds them.

Start-up is part of the interface (scripts call ``cas path`` in loops): this module imports
click and cas's base only, each command what it uses when it runs (tests/faces/test_startup.py),
and the garbage collector waits until the store is open (console.py ``pause_collector``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING

import click

from cas import __version__
from cas.cli_maintenance import gc, maintain, stats, verify
from cas.cli_manifest import manifest
from cas.console import (
    CasGroup,
    Context,
    bars,
    echo_lines,
    log_to_stderr,
    pass_context,
    pause_collector,
    say,
)
from cas.errors import CasError, InUse, UsageError
from cas.values import SYNC_JOBS

if TYPE_CHECKING:
    from cas import TransferReport


@click.group(cls=CasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--root", type=click.Path(file_okay=True),
              help="Store root (default: $CAS_HOME, else the user cache folder).")
@click.option("--config", "config_file", metavar="FILE", type=click.Path(dir_okay=True),
              help="A settings file read after <root>/config.toml (default: $CAS_CONFIG).")
@click.option("--profile", metavar="NAME",
              help="The [profile.NAME] table of the settings files to use (default: $CAS_PROFILE).")
@click.option("--offline", is_flag=True,
              help="No network at all: serve what is stored, fail the rest (setting offline).")
@click.option("-v", "--verbose", count=True, help="Say more (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True,
              help="Only errors and results (digests, paths, listings): no summaries or bars.")
@click.version_option(__version__, prog_name="cas")
@click.pass_context
def cli(ctx: click.Context, root: str | None, config_file: str | None, profile: str | None,
        offline: bool, verbose: int, quiet: bool) -> None:
    """A content-addressed store for test fixtures and other large files.

    REF is a full 64-hex digest, a name, or a prefix of at least 8 hex digits of a stored
    blob's digest (as `cas ls` prints them) that no other blob's digest shares. A name wins
    over a prefix spelled the same; `cas pull` takes names and full digests only.
    """
    log_to_stderr(verbose, quiet)
    ctx.obj = Context(root, config_file, profile, offline)


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--name", help="Name the stored content (one file or folder only).")
@pass_context
def put(context: Context, files: tuple[str, ...], name: str | None) -> None:
    """Store FILE… (or - for stdin; a folder as one tree); print "<digest>  <file>" each."""
    if name is not None and len(files) != 1:
        raise UsageError("--name needs exactly one file")
    from pathlib import Path

    store = context.store()
    sources = [sys.stdin.buffer if file == "-" else Path(file) for file in files]
    # Several files go in batches (Store.put_many): shared syncs, and a bad file stores none
    # of its batch.
    single = len(sources) == 1 or any(map(os.path.isdir, files))
    digests = [store.put(each, name=name) for each in sources] if single else store.put_many(
        sources)
    for digest, file in zip(digests, files, strict=True):
        click.echo(f"{digest}  {file}")


@cli.command()
@click.argument("ref")
@pass_context
def path(context: Context, ref: str) -> None:
    """Print the path of the blob REF (a digest, a digest prefix or a name)."""
    click.echo(str(context.store().path(ref)))


@cli.command()
@click.argument("ref")
@pass_context
def cat(context: Context, ref: str) -> None:
    """Write the content of REF to stdout."""
    import shutil

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
        try:
            store.remove(ref, force=force)
        except InUse as error:  # the API's message names no flag; the command's hint does
            raise InUse(f"{error}; use --force to remove it anyway") from error


@cli.command()
@click.argument("ref")
@pass_context
def pin(context: Context, ref: str) -> None:
    """Pin REF: cleanup never removes its blob."""
    context.store().pin(ref)


@cli.command()
@click.argument("ref")
@pass_context
def unpin(context: Context, ref: str) -> None:
    """Unpin REF."""
    context.store().unpin(ref)


@cli.command(
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False}
)
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED)
@pass_context
def lease(context: Context, words: tuple[str, ...]) -> None:
    """Run COMMAND while holding leases on REF…: cas lease REF… -- COMMAND [ARG…].

    Exits with the command's status (128+N when signal N ended it, 127 when it does not exist,
    126 when it cannot be run). SIGTERM, SIGINT and SIGHUP sent to cas go to the command.
    """
    if "--" not in words:
        raise UsageError("give the command after --, as in: cas lease REF -- COMMAND")
    split = words.index("--")
    refs, command = words[:split], words[split + 1 :]
    if not refs or not command:
        raise UsageError("cas lease needs at least one REF before -- and a COMMAND after it")
    from cas.forwarding import Forwarder
    from cas.settings import child_environment

    # Signals are blocked before the store opens, so that no thread it starts (the lease
    # keeper) can take a SIGTERM meant for the command and end cas without a release.
    with Forwarder(child_environment()) as forwarder:
        store = context.store()
        with contextlib.ExitStack() as held:
            for ref in refs:
                held.enter_context(store.lease(ref))
            status = forwarder.run(command)
    click.get_current_context().exit(status)


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def list_entries(context: Context, as_json: bool) -> None:
    """List names and blobs with size, last access, lease and pin state.

    The state column says ``pinned``, ``leased`` (by a live holder), and ``evicted`` (cleanup
    removed the blob) or ``damaged`` (its file is missing or of the wrong size; `cas verify`).
    """
    from cas import render

    entries = context.store().entries()
    if as_json:
        click.echo(render.as_json([render.entry_document(entry) for entry in entries]))
    else:
        echo_lines([render.entry_line(entry) for entry in entries])


# -- settings and metrics ---------------------------------------------------------------------


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def show_config(context: Context, as_json: bool) -> None:
    """Show every effective setting and where it came from."""
    from cas import render
    from cas.settings import COMMAND_LINE, KEYS, load_config, resolve_root

    root, root_source = resolve_root(context.root)
    config = load_config(root, context.overrides, config_file=context.config_file,
                         profile=context.profile, given_as=COMMAND_LINE)
    if as_json:
        click.echo(render.as_json(render.config_document(root, root_source, config, KEYS)))
    else:
        echo_lines(render.config_lines(root, root_source, config, KEYS))


# -- fetching ---------------------------------------------------------------------------------


@cli.command()
@click.argument("url")
@click.option("--name", help="Name the fixture; it remembers URL and hashes to fetch it again.")
@click.option("--blake3", metavar="HEX", help="Expected BLAKE3 digest of the content.")
@click.option("--sha256", metavar="HEX", help="Expected SHA-256 of the content.")
@click.option("--md5", metavar="HEX", help="Expected MD5 of the content.")
@click.option("--sha1", metavar="HEX", help="Expected SHA-1 of the content.")
@click.option("--size", type=int, help="Expected size in bytes.")
@click.option("--unpack", metavar="KIND",
              help="Unpack the verified archive (auto, zip, tar, tar.gz, tar.bz2, tar.xz,"
                   " tar.zst, gz, bz2, xz, zst); the expected values are the archive's.")
@click.option("--refresh", is_flag=True,
              help="Revalidate a URL fetched without a digest; store its new content.")
@click.option("--header", "headers", metavar="'NAME: VALUE'", multiple=True,
              help="An extra request header (repeatable); ${VAR} is read from the environment.")
@pass_context
def fetch(context: Context, url: str, name: str | None, blake3: str | None,
          sha256: str | None, md5: str | None, sha1: str | None, size: int | None,
          unpack: str | None, refresh: bool, headers: tuple[str, ...]) -> None:
    """Store the content of URL (verified, resumable); print its digest."""
    from cas.progress import TransferBar  # only commands that transfer need tqdm
    from cas.urls import redact

    shown = redact(url)  # a bar never shows the credentials a URL may carry
    bar = TransferBar(name or shown.rsplit("/", 1)[-1] or shown) if bars() else None
    try:
        digest = context.store().fetch(
            url, name=name, blake3=blake3, sha256=sha256, sha1=sha1, md5=md5, size=size,
            unpack=unpack, refresh=refresh, headers=list(headers), progress=bar,
        )
    finally:
        if bar is not None:
            bar.close()
    click.echo(digest)


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path())
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=SYNC_JOBS, show_default=True,
              help="Fixtures downloading at once (large ones first, small ones beside).")
@click.option("--update", is_flag=True, help="Refresh the fixtures that have no hash.")
@pass_context
def sync(context: Context, manifest_path: str, jobs: int, update: bool) -> None:
    """Fetch every fixture of MANIFEST; print "<digest>  <name>" for each that is stored."""
    from cas.progress import TotalBar, TransferBar

    show = bars()
    report = context.store().sync_report(manifest_path, jobs=jobs, update=update,
                                         bar=TransferBar if show else None,
                                         total_bar=TotalBar if show else None)
    for name, digest in sorted(report.digests.items()):
        click.echo(f"{digest}  {name}")
    say(f"cas: sync: {report.summary()}")
    if report.failed:
        total = len(report.digests) + len(report.failed)
        raise CasError(f"{len(report.failed)} of {total} fixtures failed")


# -- the remote tier --------------------------------------------------------------------------


@cli.command()
@click.argument("refs", nargs=-1)
@pass_context
def push(context: Context, refs: tuple[str, ...]) -> None:
    """Copy REF… (default: every named fixture) to the remote tier.

    Prints "<digest>  <ref>" for each; exits 1 if any failed.
    """
    _transfer_done("push", context.store().push(list(refs) or None))


@cli.command()
@click.argument("refs", nargs=-1)
@click.option("--manifest", "manifest_path", metavar="FILE", type=click.Path(),
              help="Pull every fixture of this manifest.")
@pass_context
def pull(context: Context, refs: tuple[str, ...], manifest_path: str | None) -> None:
    """Copy REF… (default: every name the remote has) from the remote tier, verified.

    Prints "<digest>  <ref>" for each; exits 1 if any failed.
    """
    if refs and manifest_path is not None:
        raise UsageError("give REFs or --manifest, not both")
    _transfer_done("pull", context.store().pull(list(refs) or None, manifest=manifest_path))


def _transfer_done(command: str, report: TransferReport) -> None:
    from cas import render

    echo_lines(render.transfer_lines(report))
    say(f"cas: {command}: {report.summary()}")
    if report.failed:
        total = len(report.done) + len(report.present) + len(report.failed)
        raise CasError(f"{len(report.failed)} of {total} failed")


for _command in (gc, maintain, stats, verify, manifest):  # defined beside this module
    cli.add_command(_command)


def main() -> None:
    """Console entry point."""
    pause_collector()
    cli.main(prog_name="cas")


if __name__ == "__main__":
    main()

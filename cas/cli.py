"""The ``cas`` command line: a thin layer over the Python API.

Every command calls the library; one handler turns any CasError (and click's usage errors) into
a single ``cas: error:`` line on stderr and the exit status SPEC promises.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cas import __version__
from cas.errors import CasError, IntegrityError, InUse, UsageError
from cas.ops import eviction
from cas.settings import (
    COMMAND_LINE,
    KEYS,
    child_environment,
    load_config,
    parse_duration,
    parse_interval,
    parse_size,
    resolve_root,
)
from cas.storage.metrics import Counter, Stats, human_size
from cas.store import Entry, Store

if TYPE_CHECKING:
    from cas.ops.tier import TransferReport

log = logging.getLogger("cas")

T = TypeVar("T")


class CasGroup(click.Group):
    """A click group whose every error is one ``cas: error:`` line and a stable exit status."""

    def main(
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


    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; a closed pipe and Ctrl-C are handled here, before click turns
        them into status 1 and an extra blank line."""
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            # `cas cat x | head`: the reader has what it wanted. Point stdout at /dev/null so
            # the flush at exit cannot fail again, and exit 0 like other Unix tools.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise click.exceptions.Exit(0) from None
        except KeyboardInterrupt:
            _fail("interrupted", 130)


def _quiet() -> bool:
    return bool(click.get_current_context().find_root().params.get("quiet"))


def _bars() -> bool:
    """Whether to show progress bars: on a terminal, unless -q."""
    return sys.stderr.isatty() and not _quiet()


def _say(message: str) -> None:
    """A summary line on stderr, which -q leaves out (only errors and results remain)."""
    if not _quiet():
        click.echo(message, err=True)


def _fail(message: str, status: int) -> None:
    click.echo(f"cas: error: {' '.join(message.split())}", err=True)
    sys.exit(status)


class Context:
    """What the global options decided; opens the store on first use."""

    def __init__(self, root: Path | None, config_file: Path | None, profile: str | None) -> None:
        self.root = root
        self.config_file = config_file
        self.profile = profile
        self._store: Store | None = None

    def store(self) -> Store:
        if self._store is None:
            self._store = Store.open(self.root, config_file=self.config_file,
                                     profile=self.profile, given_as=COMMAND_LINE)
            click.get_current_context().call_on_close(self._store.close)
        return self._store


pass_context = click.make_pass_decorator(Context)


@click.group(cls=CasGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=True),
    help="Store root (default: $CAS_HOME, else the user cache folder).",
)
@click.option(
    "--config",
    "config_file",
    metavar="FILE",
    type=click.Path(path_type=Path, dir_okay=True),
    help="A settings file read after <root>/config.toml (default: $CAS_CONFIG).",
)
@click.option(
    "--profile",
    metavar="NAME",
    help="The [profile.NAME] table of the settings files to use (default: $CAS_PROFILE).",
)
@click.option("-v", "--verbose", count=True, help="Say more (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True,
              help="Only errors and results (digests, paths, listings): no summaries or bars.")
@click.version_option(__version__, prog_name="cas")
@click.pass_context
def cli(
    ctx: click.Context,
    root: Path | None,
    config_file: Path | None,
    profile: str | None,
    verbose: int,
    quiet: bool,
) -> None:
    """A content-addressed store for test fixtures and other large files."""
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[
        min(verbose, 2)
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("cas: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
    ctx.obj = Context(root, config_file, profile)


@cli.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--name", help="Name the stored content (one file only).")
@pass_context
def put(context: Context, files: tuple[str, ...], name: str | None) -> None:
    """Store FILE… (or - for stdin); print "<digest>  <file>" for each."""
    if name is not None and len(files) != 1:
        raise UsageError("--name needs exactly one file")
    store = context.store()
    sources = [sys.stdin.buffer if file == "-" else Path(file) for file in files]
    # Several files go in batches (Store.put_many): shared syncs, and a bad file stores none
    # of its batch.
    digests = store.put_many(sources) if len(sources) > 1 else [store.put(sources[0], name=name)]
    for digest, file in zip(digests, files, strict=True):
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
    # Signals are blocked before the store opens, so that no thread it starts (the lease
    # keeper) can take a SIGTERM meant for the command and end cas without a release.
    with _Forwarder() as forwarder:
        store = context.store()
        with contextlib.ExitStack() as held:
            for ref in refs:
                held.enter_context(store.lease(ref))
            status = forwarder.run(command)
    click.get_current_context().exit(status)


class _CommandFailed(CasError):
    """The command of `cas lease` could not be started; statuses as a shell's."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.exit_status = status


class _Forwarder:
    """Runs one command and passes on to it the SIGTERM, SIGINT and SIGHUP sent to cas.

    Inside the ``with`` block those signals are blocked and taken with sigwaitinfo, so cas
    always lives to wait for its command and release its leases (issue 13, item 12). A signal
    from a process (``kill``) is forwarded; one from the terminal (Ctrl-C, a hang-up) is not,
    since the terminal signals the whole foreground process group, the command included.
    """

    SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

    def __enter__(self) -> _Forwarder:
        self._watched = self.SIGNALS | {signal.SIGCHLD}
        self._before = signal.pthread_sigmask(signal.SIG_BLOCK, self._watched)
        return self

    def __exit__(self, *_: object) -> None:
        # Take what is still pending, or unblocking would deliver it now: a SIGTERM would end
        # cas after the leases were released, but before it could report the status.
        while signal.sigtimedwait(self._watched, 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, self._before)

    def run(self, command: Sequence[str]) -> int:
        """Run ``command`` to its end; its exit status, or 128+N when signal N ended it.

        A signal that came before the command could start ends the run at once, without it.
        Raises _CommandFailed with status 127 when the command does not exist, 126 when it
        cannot be executed.
        """
        for pending in sorted(signal.sigpending() & self.SIGNALS):
            return 128 + int(pending)
        try:
            pid = os.posix_spawnp(command[0], list(command), child_environment(),
                                 setsigmask=self._before)
        except FileNotFoundError as error:
            raise _CommandFailed(f"{command[0]}: command not found", 127) from error
        except OSError as error:
            raise _CommandFailed(f"cannot run {command[0]}: {error.strerror}", 126) from error
        while True:
            info = signal.sigwaitinfo(self._watched)
            if info.si_signo != signal.SIGCHLD:
                if info.si_code <= 0:  # SI_USER, SI_QUEUE, SI_TKILL: sent by a process
                    os.kill(pid, info.si_signo)
                continue
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                code: int = os.waitstatus_to_exitcode(status)
                return 128 - code if code < 0 else code


def _plan_json(plan: eviction.Plan, dry_run: bool) -> dict[str, Any]:
    def item(entry: eviction.Item) -> dict[str, Any]:
        return {"digest": entry.digest, "names": list(entry.names), "size": entry.size,
                "last_access": entry.last_access, "reason": entry.reason}

    return {
        "dry_run": dry_run,
        "stored_before": plan.stored_before,
        "stored_after": plan.stored_after,
        "low_water": plan.target,
        "freed_bytes": plan.freed,
        "removed_count": plan.removed,
        # The first REPORT_LIMIT of each, oldest first: a report of a cleanup of a million
        # blobs does not hold them all in memory.
        "removed": [item(victim) for victim in plan.victims],
        "kept": [item(kept) for kept in plan.kept],
    }


def _describe(entry: eviction.Item) -> str:
    names = ", ".join(entry.names) if entry.names else "(no name)"
    return f"{names}  {entry.digest[:12]}  {_human_size(entry.size)}  {entry.reason}"


@cli.command()
@click.option("--max-size", help="Size limit for this run, e.g. 5GiB (default: max_cache_size).")
@click.option("--max-age", help="Remove what was not accessed for this long, e.g. 7d.")
@click.option("--dry-run", is_flag=True, help="Show what would go, remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def gc(context: Context, max_size: str | None, max_age: str | None, dry_run: bool,
       as_json: bool) -> None:
    """Remove least recently used and old blobs; never leased, pinned or recent ones."""
    size = _parse("--max-size", max_size, parse_size)
    age = _parse("--max-age", max_age, parse_duration)
    plan = context.store().gc(max_size=size, max_age=age, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(_plan_json(plan, dry_run), indent=2))
        return
    verb = "would free" if dry_run else "freed"
    click.echo(
        f"{verb} {plan.removed} blobs, {_human_size(plan.freed)}: "
        f"{_human_size(plan.stored_before)} -> {_human_size(plan.stored_after)} "
        f"(low water {_human_size(plan.target)})"
    )
    for victim in plan.victims:
        click.echo(f"  {'would remove' if dry_run else 'removed'}  {_describe(victim)}")
    if plan.removed > len(plan.victims):
        click.echo(f"  ... and {plan.removed - len(plan.victims)} more")
    if plan.kept:
        click.echo(f"kept {len(plan.kept)} blobs that cleanup would otherwise have removed:")
        for kept in plan.kept:
            click.echo(f"  kept  {_describe(kept)}")


@cli.command()
@click.option("--interval", help="Time between cleanups, e.g. 1h (default: cleanup_interval).")
@pass_context
def maintain(context: Context, interval: str | None) -> None:
    """Run cleanup periodically in the foreground until interrupted."""
    period = _parse("--interval", interval, parse_interval)
    store = context.store()
    log.info("cleaning up %s every %.0fs; stop with Ctrl-C", store.root,
             period or store.settings.cleanup_interval)
    store.gc()
    with store.maintenance(period), contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()


def _parse(option: str, value: str | None, parse: Callable[[str], T]) -> T | None:
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as error:
        raise UsageError(f"{option} {value!r}: {error}") from error


def _entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "name": entry.name,
        "digest": entry.digest,
        "size": entry.size,
        "last_access": entry.last_access,
        "pinned": entry.pinned,
        "present": entry.present,
        "source": entry.source,
        "state": entry.state,
        "leases": entry.leases,
    }


def _human_size(size: int | None) -> str:
    return "-" if size is None else human_size(size)


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


@cli.command("ls")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def list_entries(context: Context, as_json: bool) -> None:
    """List names and blobs with size, last access, lease and pin state.

    The state column says ``pinned``, ``leased`` (by a live holder), and ``evicted`` (cleanup
    removed the blob) or ``damaged`` (its file is missing or of the wrong size; `cas verify`).
    """
    entries = context.store().entries()
    if as_json:
        click.echo(json.dumps([_entry_json(entry) for entry in entries], indent=2))
        return
    state: Callable[[Entry], str] = lambda e: ",".join(  # noqa: E731
        flag for flag, on in (("pinned", e.pinned), ("leased", e.leases > 0),
                              ("evicted", e.state == "evicted"), ("damaged", e.damaged)) if on
    ) or "-"
    for entry in entries:
        click.echo(
            f"{entry.digest[:12]}  {_human_size(entry.size):>10}  {_when(entry.last_access)}"
            f"  {state(entry):<8}  {entry.name or ''}".rstrip()
        )


# -- settings and metrics (issue 3) -------------------------------------------------------------


@cli.command("config")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def show_config(context: Context, as_json: bool) -> None:
    """Show every effective setting and where it came from."""
    root, root_source = resolve_root(context.root)
    config = load_config(
        root, config_file=context.config_file, profile=context.profile, given_as=COMMAND_LINE
    )
    settings = config.settings
    if as_json:
        document = {
            "root": {"value": str(root), "source": root_source},
            "files": [str(path) for path in config.files],
            "profile": {"value": config.profile, "source": config.profile_source},
            "settings": {
                key: {
                    "value": getattr(settings, key),
                    "text": settings.show(key),
                    "source": config.sources[key],
                }
                for key in KEYS
            },
        }
        click.echo(json.dumps(document, indent=2))
        return
    rows = [
        ("root", str(root), root_source),
        ("files", ", ".join(str(path) for path in config.files) or "-", ""),
        ("profile", config.profile or "-", config.profile_source or ""),
    ]
    rows += [(key, settings.show(key), config.sources[key]) for key in KEYS]
    width = max(len(row[1]) for row in rows)
    for key, value, source in rows:
        click.echo(f"{key:<17} {value:<{width}}  {source}".rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--prometheus", is_flag=True, help="The Prometheus text exposition format.")
@click.option("--check", is_flag=True, help="Exit with status 1 when the store is unhealthy.")
@pass_context
def stats(context: Context, as_json: bool, prometheus: bool, check: bool) -> None:
    """Show counters, storage use, hit ratio and download success rate."""
    if as_json and prometheus:
        raise UsageError("--json and --prometheus exclude each other")
    result = context.store().stats()
    if as_json:
        click.echo(json.dumps(result.as_dict(), indent=2))
    elif prometheus:
        click.echo(result.prometheus(), nl=False)
    else:
        for label, value in _stats_rows(result):
            click.echo(f"{label:<22} {value}")
    problems = result.problems()
    if check and problems:
        raise CasError(f"store is unhealthy: {'; '.join(problems)}")


def _stats_rows(stats: Stats) -> list[tuple[str, str]]:
    """The readable table of ``cas stats``."""
    count, usage = stats.counters, stats.usage
    percent: Callable[[float | None], str] = lambda ratio: (  # noqa: E731
        "-" if ratio is None else f"{ratio:.1%}"
    )
    return [
        ("stored", f"{human_size(usage.bytes)} in {usage.blobs} blob{'s' * (usage.blobs != 1)}"),
        ("names", str(usage.names)),
        ("live leases", str(usage.live_leases)),
        ("share of max size", percent(stats.usage_ratio)),
        ("high water mark", f"{human_size(stats.max_cache_size)} (max_cache_size)"),
        ("low water mark", f"{human_size(stats.low_water_bytes)}"),
        ("hits", str(count[Counter.HITS])),
        ("misses", str(count[Counter.MISSES])),
        ("hit ratio", percent(stats.hit_ratio)),
        ("downloads succeeded", str(count[Counter.DOWNLOADS_SUCCEEDED])),
        ("downloads failed", str(count[Counter.DOWNLOADS_FAILED])),
        ("download success rate", percent(stats.download_success_rate)),
        ("download retries", str(count[Counter.DOWNLOAD_RETRIES])),
        ("downloaded", human_size(count[Counter.DOWNLOADED_BYTES])),
        ("saved by resume", human_size(count[Counter.RESUME_SAVED_BYTES])),
        ("saved by dedup", human_size(count[Counter.DEDUP_SAVED_BYTES])),
        ("evictions", f"{count[Counter.EVICTIONS]} ({human_size(count[Counter.EVICTED_BYTES])})"),
        ("cleanup runs", str(count[Counter.CLEANUP_RUNS])),
        ("verification failures", str(count[Counter.VERIFICATION_FAILURES])),
        ("staging debris", f"{stats.debris_files} files ({human_size(stats.debris_bytes)})"),
        ("staging (tmp/)", f"{stats.staging_files} files ({human_size(stats.staging_bytes)})"),
        ("quarantine", f"{stats.quarantine_files} files ({human_size(stats.quarantine_bytes)})"),
    ]


# -- fetching (issue 4) ----------------------------------------------------------------------------


@cli.command()
@click.argument("url")
@click.option("--name", help="Name the fixture; it remembers URL and hashes to fetch it again.")
@click.option("--blake3", metavar="HEX", help="Expected BLAKE3 digest of the content.")
@click.option("--sha256", metavar="HEX", help="Expected SHA-256 of the content.")
@click.option("--size", type=int, help="Expected size in bytes.")
@pass_context
def fetch(context: Context, url: str, name: str | None, blake3: str | None,
          sha256: str | None, size: int | None) -> None:
    """Store the content of URL (verified, resumable); print its digest."""
    from cas.progress import TransferBar  # only commands that transfer need tqdm
    from cas.urls import redact

    shown = redact(url)  # a bar never shows the credentials a URL may carry
    bar = TransferBar(name or shown.rsplit("/", 1)[-1] or shown) if _bars() else None
    try:
        digest = context.store().fetch(
            url, name=name, blake3=blake3, sha256=sha256, size=size, progress=bar
        )
    finally:
        if bar is not None:
            bar.close()
    click.echo(digest)


@cli.command()
@click.argument("manifest_path", metavar="MANIFEST", type=click.Path(path_type=Path))
@click.option("--jobs", "-j", type=click.IntRange(min=1), default=4, show_default=True,
              help="Downloads at once.")
@pass_context
def sync(context: Context, manifest_path: Path, jobs: int) -> None:
    """Fetch every fixture of MANIFEST; print "<digest>  <name>" for each that is stored."""
    from cas.progress import TotalBar, TransferBar

    bars = _bars()
    report = context.store().sync_report(manifest_path, jobs=jobs,
                                         bar=TransferBar if bars else None,
                                         total_bar=TotalBar if bars else None)
    for name, digest in sorted(report.digests.items()):
        click.echo(f"{digest}  {name}")
    _say(f"cas: sync: {report.summary()}")
    if report.failed:
        total = len(report.digests) + len(report.failed)
        raise CasError(f"{len(report.failed)} of {total} fixtures failed")


# -- verification (issue 6) -----------------------------------------------------------------------


@cli.command()
@click.option("--quick", is_flag=True,
              help="Check existence, size and mode; rehash only files changed since checked.")
@click.option("--repair", is_flag=True,
              help="Fetch damaged or missing named fixtures again from their sources.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--budget", metavar="DURATION",
              help="Stop rehashing after this long, e.g. 10m; the next run continues.")
@pass_context
def verify(context: Context, quick: bool, repair: bool, as_json: bool,
           budget: str | None) -> None:
    """Check every blob against the catalog; fix what loses nothing, report the rest.

    Exits with status 4 when damage remains.
    """
    from cas.progress import TransferBar

    seconds = _parse("--budget", budget, parse_duration)
    bar = TransferBar("verify") if _bars() else None
    try:
        report = context.store().verify(full=not quick, repair=repair, budget=seconds,
                                        progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.summary())
        for finding in report.findings:
            state = "REMAINS" if finding.remains else "fixed"
            names = f" ({', '.join(finding.names)})" if finding.names else ""
            click.echo(f"  {state:<7}  {finding.kind:<8}  {finding.subject}{names}:"
                       f" {finding.detail}; {finding.action}")
    if report.damaged:
        kinds = sorted({finding.kind for finding in report.remaining})
        raise IntegrityError(f"damage remains: {len(report.remaining)} finding(s) of kind"
                             f" {', '.join(kinds)}; see the report")


# -- the remote tier (issue 8) ---------------------------------------------------------------------


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
@click.option("--manifest", "manifest_path", metavar="FILE", type=click.Path(path_type=Path),
              help="Pull every fixture of this manifest.")
@pass_context
def pull(context: Context, refs: tuple[str, ...], manifest_path: Path | None) -> None:
    """Copy REF… (default: every name the remote has) from the remote tier, verified.

    Prints "<digest>  <ref>" for each; exits 1 if any failed.
    """
    if refs and manifest_path is not None:
        raise UsageError("give REFs or --manifest, not both")
    _transfer_done("pull", context.store().pull(list(refs) or None, manifest=manifest_path))


def _transfer_done(command: str, report: TransferReport) -> None:
    for ref, digest in sorted({**report.present, **report.done}.items()):
        click.echo(f"{digest}  {ref}")
    _say(f"cas: {command}: {report.summary()}")
    if report.failed:
        total = len(report.done) + len(report.present) + len(report.failed)
        raise CasError(f"{len(report.failed)} of {total} failed")


def main() -> None:
    """Console entry point."""
    cli.main(prog_name="cas")


if __name__ == "__main__":
    main()

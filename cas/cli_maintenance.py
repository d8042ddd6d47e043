"""``cas gc``, ``maintain``, ``verify`` and ``stats``: keeping a store within bounds and whole,
and saying how it is.

cas/cli.py adds these commands to its group; like the rest of the command line this module
imports click and cas's base at the top, and each command what it uses when it runs (start-up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

import click

from cas.console import Context, bars, echo_lines, pass_context
from cas.errors import CasError, IntegrityError, UsageError

T = TypeVar("T")


@click.command()
@click.option("--max-size", help="Size limit for this run, e.g. 5GiB (default: max_cache_size).")
@click.option("--max-age", help="Remove what was not accessed for this long, e.g. 7d.")
@click.option("--dry-run", is_flag=True, help="Show what would go, remove nothing.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@pass_context
def gc(context: Context, max_size: str | None, max_age: str | None, dry_run: bool,
       as_json: bool) -> None:
    """Remove least recently used and old blobs; never leased, pinned or recent ones."""
    from cas import render
    from cas.values import parse_duration, parse_size

    size = _parse("--max-size", max_size, parse_size)
    age = _parse("--max-age", max_age, parse_duration)
    plan = context.store().gc(max_size=size, max_age=age, dry_run=dry_run)
    if as_json:
        click.echo(render.as_json(render.plan_document(plan, dry_run)))
    else:
        echo_lines(render.plan_lines(plan, dry_run))


@click.command()
@click.option("--interval", help="Time between cleanups, e.g. 1h (default: cleanup_interval).")
@pass_context
def maintain(context: Context, interval: str | None) -> None:
    """Run cleanup periodically in the foreground until interrupted."""
    import threading

    from cas.logs import log
    from cas.values import parse_interval

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

@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--prometheus", is_flag=True, help="The Prometheus text exposition format.")
@click.option("--check", is_flag=True, help="Exit with status 1 when the store is unhealthy.")
@pass_context
def stats(context: Context, as_json: bool, prometheus: bool, check: bool) -> None:
    """Show counters, storage use, hit ratio and download success rate."""
    from cas import render

    if as_json and prometheus:
        raise UsageError("--json and --prometheus exclude each other")
    result = context.store().stats()
    if as_json:
        click.echo(render.as_json(result.as_dict()))
    elif prometheus:
        click.echo(result.prometheus(), nl=False)
    else:
        echo_lines(render.stats_lines(result))
    problems = result.problems()
    if check and problems:
        raise CasError(f"store is unhealthy: {'; '.join(problems)}")

@click.command()
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
    from cas import render
    from cas.progress import TransferBar
    from cas.values import parse_duration

    seconds = _parse("--budget", budget, parse_duration)
    bar = TransferBar("verify") if bars() else None
    try:
        report = context.store().verify(full=not quick, repair=repair, budget=seconds,
                                        progress=bar)
    finally:
        if bar is not None:
            bar.close()
    if as_json:
        click.echo(render.as_json(report.as_dict()))
    else:
        echo_lines(render.verify_lines(report))
    if report.damaged:
        raise IntegrityError(render.damage_remains(report))

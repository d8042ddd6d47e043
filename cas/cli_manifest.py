"""``cas manifest …``: commands that write manifests, and need no store.

Kept beside cas/cli.py (which adds this group) so that module stays one screenful per concern;
it imports click alone at the top, as the rest of the command line does (start-up).
"""

from __future__ import annotations

import contextlib
import os

import click

from cas.errors import os_error


@click.group()
def manifest() -> None:
    """Write manifests from what other tools keep."""


@manifest.command("from-pooch")
@click.argument("registry", type=click.Path())
@click.option("--base-url", metavar="URL",
              help="Where names without a URL of their own are, as in pooch.create(base_url=).")
@click.option("-o", "--output", metavar="FILE", type=click.Path(),
              help="Write the manifest here (default: standard output).")
def from_pooch(registry: str, base_url: str | None, output: str | None) -> None:
    """Write a manifest of every fixture of a pooch REGISTRY file ("name hash [url]" lines;
    hashes md5:, sha1:, sha256: or bare for SHA-256)."""
    from cas import manifest_from_pooch

    text = manifest_from_pooch(registry, base_url)
    if output is None:
        click.echo(text, nl=False)
        return
    # Whole or not at all: written beside the target, then renamed over it.
    scratch = f"{output}.tmp-{os.getpid()}"
    try:
        with open(scratch, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(scratch, output)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise os_error(error, f"cannot write {output}") from error

"""Fetching into the store: serve what is already known, else download once, verify, publish.

Policy over two mechanisms: transfer/http.py moves and verifies bytes, the catalog knows what is
stored. A fetch is answered without network when its expected BLAKE3 is stored, when an expected
SHA-256, SHA-1 or MD5 was seen before for a stored blob (the ``aliases`` table), or, when it
expects no digest, when the URL's last content is still stored (the ``sources`` table). A name
fetched from a URL without a digest keeps what its first fetch got: later fetches of that URL
under that name expect that digest (``Fetcher.recorded``) until a refresh. Otherwise one thread
of one process downloads (single flight: the others wait on its lock, then find the blob on
their re-check), and the verified staging file goes through the publish-then-record step that
put and pull share (cas/ops/record.py): file first, then rows. A store with a remote tier passes
it as a ``Tier``, asked after a local miss and before the origin. An offline store (the
``offline`` setting) has neither downloader nor tier: a local miss is ``offline_error``.

Every expected hash is checked against the content before it is trusted or recorded: a checksum
not yet known as an alias of the stored blob it would be served from is computed from that
blob's file, here, without network. A fetch that knows only upstream checksums also hashes the
content the URL gave last time and the blob its name points at, so a later request for stored
content never downloads it again. Credentials in a URL are used by the download only; the
catalog, logs and messages get the URL without them (cas/urls.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, overload

from cas.errors import DownloadError, IntegrityError, UsageError, offline_error, os_error
from cas.logs import log
from cas.ops.record import Clock, Fetched, Recorder
from cas.refs import check_checksum, check_name
from cas.storage import queries as q
from cas.storage import sources
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection
from cas.storage.counters import Counter
from cas.transfer.request import Expected, Progress, Validators, check_url
from cas.urls import redact
from cas.values import Headers, parse_headers

if TYPE_CHECKING:
    from cas.transfer.http import Downloader  # given by the store: urllib3 loads with it


__all__ = ["Expected", "Fetched", "Fetcher", "Tier", "expectation"]


class Tier(Protocol):
    """What a fetch asks of a second tier (the remote, cas/ops/tier.py) around the origin."""

    def read_through(self, url: str, name: str | None, expected: Expected) -> Fetched | None:
        """The expected content from the tier, recorded; None when it cannot serve it."""

    def offer(self, fetched: Fetched, url: str, name: str | None, expected: Expected) -> None:
        """Take what the origin served (a failure is the tier's to report)."""


def expectation(
    blake3: str | None, sha256: str | None, size: int | None,
    sha1: str | None = None, md5: str | None = None,
) -> Expected:  # fmt: skip
    """Validate what a caller expects of a download; raise UsageError naming a bad value."""
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise UsageError(f"size {size!r} is not a non-negative number of bytes")
    def valid(value: str | None, algorithm: str) -> str | None:
        return check_checksum(value, algorithm) if value is not None else None

    return Expected(blake3=valid(blake3, "blake3"), sha256=valid(sha256, "sha256"), size=size,
                    sha1=valid(sha1, "sha1"), md5=valid(md5, "md5"))  # fmt: skip


def request_headers(setting: Headers, given: object) -> Headers:
    """The extra headers of a fetch: the ``headers`` setting's, then ``given`` (a mapping,
    ``Name: value`` lines, ...; see ``values.parse_headers``), which wins by name. Raises
    UsageError naming a bad header, never its value."""
    try:
        called = parse_headers(given)
    except ValueError as error:
        raise UsageError(f"headers: {error}") from None
    names = {name.lower() for name, _ in called}
    return tuple(pair for pair in setting if pair[0].lower() not in names) + called


class Fetcher:
    """Fetches for one store: its blobs, catalog and downloader, the recorder that keeps what
    arrives, and the tier tried before the origin (the remote, when one is configured)."""

    def __init__(self, blobs: BlobStore, catalog: Catalog, downloader: Downloader | None,
                 recorder: Recorder, *, tier: Tier | None = None, clock: Clock,
                 headers: Headers = ()) -> None:
        """``downloader`` None is a store that is offline: only what is stored is served, and
        anything else is ``offline_error`` (give no tier either). ``headers`` (the setting)
        go with every request, under those of a fetch."""
        self._headers = headers
        self._blobs = blobs
        self._catalog = catalog
        self.downloader = downloader
        self._recorder = recorder
        self._tier = tier
        self._clock = clock

    def fetch(
        self,
        url: str,
        *,
        name: str | None = None,
        blake3: str | None = None,
        sha256: str | None = None,
        sha1: str | None = None,
        md5: str | None = None,
        size: int | None = None,
        refresh: bool = False,
        headers: object = None,
        progress: Progress | None = None,
    ) -> Fetched:
        """The content of ``url`` in the store, downloaded only if it is not known already
        (with ``refresh``, revalidated: ``_refresh``). ``headers`` go with its requests, over
        the setting's (by name); they are never recorded.

        Raises UsageError for bad arguments, DownloadError, IntegrityError (the content does
        not match what was expected), StoreError (the content cannot be written).
        """
        source = url  # with its credentials, if any: for the download alone
        url = check_url(redact(url)) if isinstance(url, str) else check_url(url)
        if name is not None:
            check_name(name)
        expected = expectation(blake3, sha256, size, sha1, md5)
        extra = request_headers(self._headers, headers)
        if refresh:
            return self._refresh(url, source, name, expected, extra, progress)
        recorded = self.recorded(url, name, expected)
        expected = recorded or expected
        ruled_out: set[str] = set()  # blobs hashed and found not to be the expected content
        served = self._serve(url, name, expected, ruled_out)
        if served is not None:
            return served
        if self.downloader is None:
            what = f"fixture {name!r} ({url})" if name is not None else url
            raise offline_error(f"{what} is not stored")
        keys = [f"url:{url}"]
        keys += [f"blake3:{expected.blake3}"] if expected.blake3 else []
        keys += [f"{algorithm}:{value}" for algorithm, value in expected.upstream().items()]
        with self.downloader.single_flight(keys):
            # Another thread or process may have fetched it while this one waited.
            served = self._serve(url, name, expected, ruled_out)
            if served is not None:
                return served
            if self._tier is not None:  # a local miss tries the tier before the origin
                pulled = self._tier.read_through(url, name, expected)
                if pulled is not None:
                    return pulled
            try:
                fetched = self._download(url, source, name, expected, progress, extra)
            except IntegrityError as error:
                if recorded is None:
                    raise
                raise IntegrityError(
                    f"{error}; fixture {name!r} holds what {url} gave when first fetched:"
                    " refresh it to take the new content (`cas fetch --refresh`,"
                    " `cas sync --update`)",
                    expected=error.expected, found=error.found,
                ) from error  # fmt: skip
        if self._tier is not None:  # outside the lock: the others find the blob stored already
            self._tier.offer(fetched, url, name, expected)
        return fetched

    def _refresh(self, url: str, source: str, name: str | None, expected: Expected,
                 extra: Headers, progress: Progress | None) -> Fetched:  # fmt: skip
        """Revalidate what ``url`` gave last: a conditional request with its validators, whose
        304 keeps the stored content (no body), while a 200 stores the new content and moves
        the URL's floating names to it. Single flight: a refresh that waited for another
        download or revalidation of the URL (its ``checks`` count moved) sends none itself.
        Raises UsageError when a digest is expected (it fixes the content: nothing to
        refresh), ``offline_error`` offline."""
        if expected.pinned:
            raise UsageError(f"refresh revalidates a URL fetched without an expected digest;"
                             f" the expected digest of {url} fixes its content")  # fmt: skip
        if self.downloader is None:
            raise offline_error(f"cannot refresh {url}")
        with self._catalog.read() as conn:
            before = sources.find_source_row(conn, url)
        checks = before.checks if before is not None else 0
        with self.downloader.single_flight([f"url:{url}"]):
            with self._catalog.read() as conn:
                row = sources.find_source_row(conn, url)
                blob = self._stored_row(conn, row.digest) if row is not None else None
            current = blob is not None and expected.size in (None, blob.size)
            if current and row is not None and row.checks != checks:
                served = self._serve(url, name, expected, set())  # refreshed while waiting
                if served is not None:
                    return served
            known = Validators(row.etag, row.last_modified) if current and row else None
            fetched = self._download(url, source, name, expected, progress, extra, known or None)
            if fetched is None:  # 304 Not Modified: the stored content is current
                self._catalog.write(lambda conn: sources.count_check(conn, url))
                served = self._serve(url, name, expected, set())
                fetched = served or self._download(url, source, name, expected, progress, extra)
        assert fetched is not None
        if self._tier is not None and fetched.downloaded:
            self._tier.offer(fetched, url, name, expected)
        return fetched

    def recorded(self, url: str, name: str | None, expected: Expected) -> Expected | None:
        """What a fetch of ``url`` named ``name`` that expects no digest must get: the content
        the name holds, when it was fetched from this same URL (its first fetch recorded the
        digest; a refresh is what moves it on). None when a digest is expected, or the name is
        new or came from elsewhere: then whatever the URL gives is taken."""
        if name is None or expected.blake3 is not None or expected.upstream():
            return None
        with self._catalog.read() as conn:
            named = q.find_name(conn, name)
        if named is None or named.url != url:
            return None
        return Expected(blake3=named.digest, size=expected.size, held=True)

    # -- served from the store -------------------------------------------------------------------

    def stored(self, url: str | None, name: str | None, expected: Expected) -> Fetched | None:
        """What a fetch of ``url`` expecting ``expected`` would be served from the store,
        without network, named ``name`` (when ``url`` is given); None when it is not stored.

        Without ``url``, only ``name``'s blob and the expected digests are looked at, and the
        name is left as it is. Raises IntegrityError when a stored blob is known to be the
        expected BLAKE3 but not the expected SHA-256 or size.
        """
        if url is not None:
            url = check_url(redact(url))
        return self._serve(url, name, expected, set())

    def _serve(self, url: str | None, name: str | None, expected: Expected,
               ruled_out: set[str]) -> Fetched | None:  # fmt: skip
        match = self._match(url, name, expected, ruled_out)
        if match is None:
            return None
        row, computed = match
        if computed or (name is not None and url is not None):

            def work(conn: Connection) -> bool:
                # Record it only if it is still there: cleanup may have removed it meanwhile.
                if q.find_blob(conn, row.digest) is None:
                    return False
                for algorithm, value in computed.items():  # from the blob's own bytes just now
                    q.record_alias(conn, algorithm, value, row.digest)
                if name is not None and url is not None:
                    q.set_name(
                        conn, name, row.digest, self._clock(), url=url, sha256=expected.sha256,
                        expected_size=row.size, floating=not expected.pinned,
                    )  # fmt: skip
                return True

            if not self._catalog.write(work):
                return None
        self._catalog.touch(row.digest, row.last_access)
        self._catalog.count(Counter.HITS)
        log.debug("%s served from the store as %s", url or name, row.digest)
        return Fetched(row.digest, row.size, downloaded=False)

    def _match(self, url: str | None, name: str | None, expected: Expected,
               ruled_out: set[str]) -> tuple[Any, dict[str, str]] | None:  # fmt: skip
        """The stored blob row that answers this fetch and the upstream checksums to record as
        its aliases (those just computed from its file), or None.

        A row found by its expected BLAKE3 (or one expected checksum) with other expected
        checksums not known as its aliases is hashed, and a mismatch refuses the fetch
        (IntegrityError), as a download would; checksums seen for no stored blob are looked
        for in the URL's last content and the name's blob, hashed here: the bytes are on this
        disk already.
        """
        wanted = expected.upstream()
        with self._catalog.read() as conn:
            row, known, candidates = self._look_up(conn, url, name, expected)
        if row is not None:
            if expected.blake3 is None and not wanted:
                # What the URL gave last time may not be what is expected now: download.
                return (row, {}) if expected.size in (None, row.size) else None
            self._check_size(row, url or name, expected)
            unknown = {key: value for key, value in wanted.items() if key not in known}
            if not unknown:
                return row, {}
            return row, self._recorder.confirmed(row.digest, unknown, url or name)
        for candidate in candidates:
            if candidate.digest in ruled_out:
                continue
            right_size = expected.size is None or candidate.size == expected.size
            if right_size and self._recorder.checksums_of(candidate.digest,
                                                          tuple(wanted)) == wanted:
                log.debug("%s is stored already as %s", wanted, candidate.digest)
                return candidate, wanted
            ruled_out.add(candidate.digest)
        return None

    def _look_up(self, conn: Connection, url: str | None, name: str | None, expected: Expected,
                 ) -> tuple[Any, set[str], list[Any]]:  # fmt: skip
        """(the stored row the expected digests or the URL designate, the expected checksums
        known as aliases of it, stored rows that may hold the expected checksums)."""
        wanted = expected.upstream()
        seen = {key: q.find_alias(conn, key, value) for key, value in wanted.items()}
        known = {key for key, digest in seen.items() if digest is not None}
        if expected.blake3 is not None:
            for key, digest in seen.items():
                if digest is not None and digest != expected.blake3:
                    raise IntegrityError(
                        f"{key} {wanted[key]} is the content {digest}, not the expected"
                        f" blake3 {expected.blake3}; check the expected digests of {url or name}",
                        expected=expected.blake3,
                        found=digest,
                    )
            return self._stored_row(conn, expected.blake3), known, []
        if wanted:
            contents = {digest: key for key, digest in seen.items() if digest is not None}
            if len(contents) > 1:
                (one, first), (other, second) = list(contents.items())[:2]
                raise IntegrityError(
                    f"{first} {wanted[first]} is the content {one} but {second}"
                    f" {wanted[second]} is {other}; check the expected digests of {url or name}",
                    expected=one,
                    found=other,
                )
            row = self._stored_row(conn, next(iter(contents), None))
            if row is not None:
                return row, known, []
            named = q.find_name(conn, name) if name is not None else None
            digests = [q.find_source(conn, url) if url is not None else None,
                       named.digest if named is not None else None]  # fmt: skip
            rows = [self._stored_row(conn, digest) for digest in dict.fromkeys(digests)]
            return None, set(), [row for row in rows if row is not None]
        if url is not None:
            return self._stored_row(conn, q.find_source(conn, url)), known, []
        named = q.find_name(conn, name) if name is not None else None
        return self._stored_row(conn, named.digest if named else None), known, []

    def _stored_row(self, conn: Connection, digest: str | None) -> Any:
        """The row of ``digest`` if its blob is stored whole, else None."""
        row = q.find_blob(conn, digest) if digest is not None else None
        return row if row is not None and self._blobs.has(row.digest, row.size) else None

    @staticmethod
    def _check_size(row: Any, where: str | None, expected: Expected) -> None:
        if expected.size is not None and row.size != expected.size:
            raise IntegrityError(
                f"content {row.digest} is {row.size} bytes, not the expected {expected.size};"
                f" check the expected size of {where}",
                expected=expected.size,
                found=row.size,
            )

    # -- downloaded ------------------------------------------------------------------------------

    @overload
    def _download(self, url: str, source: str, name: str | None, expected: Expected,
                  progress: Progress | None, extra: Headers) -> Fetched: ...

    @overload
    def _download(self, url: str, source: str, name: str | None, expected: Expected,
                  progress: Progress | None, extra: Headers,
                  validators: Validators | None) -> Fetched | None: ...

    def _download(
        self, url: str, source: str, name: str | None, expected: Expected,
        progress: Progress | None, extra: Headers, validators: Validators | None = None,
    ) -> Fetched | None:  # fmt: skip
        """Download ``source`` (``url`` with its credentials, if any) and keep it as ``url``'s;
        None when ``validators`` were given and the server answered 304 Not Modified."""
        assert self.downloader is not None  # offline fetches stop in fetch()
        try:
            result = self.downloader.download(
                source, expected, progress,
                received=lambda amount: self._catalog.count(Counter.DOWNLOADED_BYTES, amount),
                headers=extra, validators=validators,
            )  # fmt: skip
        except (DownloadError, IntegrityError) as error:
            self._catalog.count(Counter.DOWNLOADS_FAILED)
            self._catalog.count(Counter.DOWNLOAD_RETRIES, max(getattr(error, "attempts", 1) - 1, 0))
            raise
        except OSError as error:  # e.g. the lock or staging file of a full or read-only disk
            self._catalog.count(Counter.DOWNLOADS_FAILED)
            raise os_error(error, f"cannot download {url}") from error
        if result is None:
            return None
        return self._recorder.keep(result, url=url, name=name, expected=expected, via=url)

"""Trees in the remote tier: a tree travels as its members' blobs and its record's blob.

Push uploads every member first, then the record, then the name's record, so the remote never
names a tree whose files it lacks. Pull fetches the record's blob (unnamed), validates it as a
tree record (cas/storage/trees.py: format, safe paths, canonical form), pulls each member,
records the tree's rows once all are stored, and only then points the name at it: a name
never shows half a tree. The remote's records stay as they are: a blob whose bytes are a
canonical tree record is a tree.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from cas.errors import StoreError
from cas.storage import trees
from cas.storage.blobs import BlobStore
from cas.storage.catalog import Catalog, Connection

#: Members moved at once within one tree.
MEMBER_JOBS = 4
_HEAD = b'{"files":['


def members_of(catalog: Catalog, digest: str) -> list[trees.TreeFile]:
    """The members of the stored tree ``digest`` (one per blob), or [] for a file."""
    if trees.find(catalog, digest) is None:
        return []
    with catalog.read() as conn:
        files = trees.members(conn, digest)
    return list({member.digest: member for member in files}.values())


def is_record(content: bytes) -> bool:
    """Whether ``content`` may be a tree's record (its members are pulled before its name)."""
    return content.startswith(_HEAD)


def stored_record(blobs: BlobStore, digest: str) -> trees.Tree | None:
    """The tree whose record is the stored blob ``digest``; None when the blob is no tree
    record. Raises IntegrityError for a blob that looks like one but is not valid."""
    with blobs.open(digest) as blob:
        if blob.read(len(_HEAD)) != _HEAD:
            return None
        data = _HEAD + blob.read()
    if not trees.looks_like_record(data):
        return None
    return trees.decode(data)


def each(work: Callable[[trees.TreeFile], object], members: list[trees.TreeFile]) -> bool:
    """Run ``work`` on every member, ``MEMBER_JOBS`` at once; whether any returned truthy.
    The first failure is raised once all finished."""
    with ThreadPoolExecutor(max_workers=MEMBER_JOBS, thread_name_prefix="cas-tree") as pool:
        results = list(pool.map(_settled(work), members))
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return any(results)


def _settled(work: Callable[[trees.TreeFile], object]
             ) -> Callable[[trees.TreeFile], object]:  # fmt: skip
    def run(member: trees.TreeFile) -> object:
        try:
            return work(member)
        except Exception as error:
            return error

    return run


def record_pulled(catalog: Catalog, digest: str, tree: trees.Tree) -> None:
    """Record the rows of the pulled tree ``digest`` once every member is stored."""
    def work(conn: Connection) -> None:
        missing = trees.missing_members(conn, (member.digest for member in tree.files))
        if missing:
            raise StoreError(f"tree {digest}: {len(missing)} of its files went before it was"
                             " recorded (a concurrent cleanup); pull it again")
        trees.record(conn, digest, tree)

    catalog.write(work)

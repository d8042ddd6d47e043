"""Trees: the record that describes a stored folder, and the SQL of its rows.

A tree's record is a blob like any other, and its BLAKE3 digest is the tree's ref. It is
canonical compact JSON (UTF-8, sorted keys, no spaces), so one folder always gives one digest:

    {"files":[["a/b.txt","<digest>",12,0],["run.sh","<digest>",80,1]],
     "folders":["empty/sub"],"format":"cas-tree/1"}

``files`` holds every regular file as ``[path, digest, size, executable]``, sorted by path
(code-point order); ``folders`` the folders that hold nothing at all (every other folder is
implied by a path), sorted. A path is relative, ``/``-separated, and has no empty, ``.`` or
``..`` component; a file's path is never a folder of another's. The ``trees`` and
``tree_entries`` tables (schema.sql, version 6) repeat a stored record for queries; their rows
go with the record blob's row (a trigger).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from cas.errors import IntegrityError
from cas.refs import is_digest
from cas.storage.catalog import Catalog, Connection

#: The record's format marker: a record of another format is refused, never guessed at.
FORMAT = "cas-tree/1"


class TreeFile(NamedTuple):
    path: str
    digest: str
    size: int
    executable: bool


@dataclass(frozen=True)
class Tree:
    """A tree as its record describes it."""

    files: tuple[TreeFile, ...]
    folders: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        return sum(each.size for each in self.files)

    def encode(self) -> bytes:
        """The canonical record."""
        import json  # only where records are made or read: not on the look-up route

        record = {
            "files": [[f.path, f.digest, f.size, int(f.executable)] for f in self.files],
            "folders": list(self.folders),
            "format": FORMAT,
        }
        return json.dumps(record, ensure_ascii=False, separators=(",", ":"),
                          sort_keys=True).encode()

    @classmethod
    def build(cls, files: Iterable[TreeFile], folders: Iterable[str] = ()) -> Tree:
        """A tree of ``files`` and empty ``folders`` in canonical order, checked."""
        tree = cls(tuple(sorted(files)), tuple(sorted(set(folders))))
        tree.check()
        return tree

    def check(self) -> None:
        """Raise IntegrityError unless every path is safe, sorted, unique and consistent."""
        paths = [f.path for f in self.files]
        if paths != sorted(set(paths)) or list(self.folders) != sorted(set(self.folders)):
            raise IntegrityError("tree record: paths are not sorted and unique")
        parents: set[str] = set()
        for path in [*paths, *self.folders]:
            problem = path_problem(path)
            if problem:
                raise IntegrityError(f"tree record: path {path!r} {problem}")
            parts = path.split("/")
            parents.update("/".join(parts[:i]) for i in range(1, len(parts)))
        for each in self.files:
            if not is_digest(each.digest) or each.digest != each.digest.lower():
                raise IntegrityError(f"tree record: {each.path!r} has no valid digest")
            if type(each.size) is not int or each.size < 0:
                raise IntegrityError(f"tree record: {each.path!r} has no valid size")
        clash = parents.intersection(paths) or set(self.folders).intersection(paths) or (
            parents.intersection(self.folders))
        if clash:
            raise IntegrityError(f"tree record: {sorted(clash)[0]!r} is both a file and a"
                                 " folder, or an empty folder with contents")


def path_problem(path: str) -> str | None:
    """Why ``path`` cannot be a relative path inside a tree, or None."""
    if not isinstance(path, str) or not path:
        return "is empty"
    if path.startswith("/"):
        return "is absolute"
    if "\0" in path:
        return "holds a NUL"
    if any(part in ("", ".", "..") for part in path.split("/")):
        return "leaves the folder or has an empty component"
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    return None


def decode(data: bytes) -> Tree:
    """The tree a record describes. Raises IntegrityError for anything but a valid record."""
    import json

    try:
        record: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise IntegrityError(f"tree record is not valid JSON: {error}") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise IntegrityError(f"not a tree record of format {FORMAT}")
    files, folders = record.get("files"), record.get("folders", [])
    if not isinstance(files, list) or not isinstance(folders, list):
        raise IntegrityError("tree record: files and folders must be lists")
    parsed = []
    for item in files:
        if (not isinstance(item, list) or len(item) != 4 or not isinstance(item[0], str)
                or not isinstance(item[1], str) or item[3] not in (0, 1)
                or isinstance(item[3], bool)):
            raise IntegrityError(f"tree record: malformed file entry {str(item)[:80]}")
        parsed.append(TreeFile(item[0], item[1], item[2], bool(item[3])))
    if not all(isinstance(each, str) for each in folders):
        raise IntegrityError("tree record: folders must be strings")
    tree = Tree(tuple(parsed), tuple(folders))
    tree.check()
    if tree.encode() != data:
        raise IntegrityError("tree record is not in canonical form")
    return tree


def looks_like_record(data: bytes) -> bool:
    """Whether ``data`` may be a tree record (cheap: before decoding a blob that may be)."""
    return data.startswith(b'{"files":[') and data.endswith(b'"format":"cas-tree/1"}')


# -- SQL ----------------------------------------------------------------------------------------


class TreeRow(NamedTuple):
    digest: str
    files: int
    size: int


def record(conn: Connection, digest: str, tree: Tree) -> None:
    """Insert the rows of the tree ``digest`` (nothing when they are there)."""
    conn.execute("INSERT OR IGNORE INTO trees (digest, files, size) VALUES (?, ?, ?)",
                 (digest, len(tree.files), tree.size))
    conn.executemany(
        "INSERT OR IGNORE INTO tree_entries (tree, path, digest, size, executable)"
        " VALUES (?, ?, ?, ?, ?)",
        [(digest, f.path, f.digest, f.size, int(f.executable)) for f in tree.files],
    )


def find(source: Connection | Catalog, digest: str) -> TreeRow | None:
    """The tree row of ``digest``, or None when it is no stored tree."""
    sql = "SELECT digest, files, size FROM trees WHERE digest = ?"
    if isinstance(source, Catalog):
        row = source.lookup(sql, (digest,))
    else:
        row = source.execute(sql, (digest,)).fetchone()
    return None if row is None else TreeRow._make(row)


def any_of(conn: Connection, digests: list[str]) -> bool:
    """Whether any of ``digests`` is a stored tree (a probe of the primary key each)."""
    for start in range(0, len(digests), 500):
        part = digests[start:start + 500]
        marks = ",".join("?" * len(part))
        if conn.execute(f"SELECT 1 FROM trees WHERE digest IN ({marks}) LIMIT 1",
                        part).fetchone():
            return True
    return False


def count(conn: Connection) -> int:
    """How many trees are stored."""
    return int(conn.execute("SELECT count(*) FROM trees").fetchone()[0])


def all_trees(conn: Connection) -> dict[str, TreeRow]:
    """Every tree row, by digest."""
    return {row[0]: TreeRow._make(row)
            for row in conn.execute("SELECT digest, files, size FROM trees")}


def members(conn: Connection, digest: str) -> list[TreeFile]:
    """The files of the tree ``digest``, by path."""
    return [TreeFile(path, member, size, bool(executable)) for path, member, size, executable
            in conn.execute("SELECT path, digest, size, executable FROM tree_entries"
                            " WHERE tree = ? ORDER BY path", (digest,))]


def missing_members(conn: Connection, digests: Iterable[str]) -> list[str]:
    """Those of ``digests`` that have no blob row."""
    wanted = sorted(set(digests))
    missing: list[str] = []
    for start in range(0, len(wanted), 500):
        part = wanted[start:start + 500]
        marks = ",".join("?" * len(part))
        present = {d for (d,) in conn.execute(
            f"SELECT digest FROM blobs WHERE digest IN ({marks})", part)}
        missing += [d for d in part if d not in present]
    return missing


def holder_of(conn: Connection, digest: str) -> str | None:
    """A stored tree that holds the blob ``digest`` (its rows exist only while it is stored),
    or None."""
    row = conn.execute("SELECT tree FROM tree_entries WHERE digest = ? LIMIT 1",
                       (digest,)).fetchone()
    return None if row is None else str(row[0])

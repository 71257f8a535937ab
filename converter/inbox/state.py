"""Durable state of the inbox pipeline in an embedded SQLite database.

Every file seen in the inbox and every series has a row, so a re-run or a
restart after a crash (kill -9 included) knows what was already published
and what was in flight. Parsed DICOM headers are cached with the file's size
and mtime, so a scan with nothing to do reads no DICOM file at all.
"""

from __future__ import annotations

import pickle
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from converter.inbox.database import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    rel TEXT PRIMARY KEY,          -- path relative to the inbox ("archive:<path>" once archived)
    location TEXT NOT NULL,        -- where the file is now
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,            -- dicom | passthrough | rejected
    series_uid TEXT,
    header BLOB,                   -- pickled WsiInstance for dicom files
    reason TEXT,
    state TEXT NOT NULL,           -- pending (in the inbox) | archived
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS files_series ON files(series_uid);
CREATE INDEX IF NOT EXISTS files_state ON files(state);
CREATE TABLE IF NOT EXISTS series (
    uid TEXT PRIMARY KEY,
    study_uid TEXT,
    state TEXT NOT NULL,           -- pending | converting | published | failed
    output TEXT,
    error TEXT,
    conversions INTEGER NOT NULL DEFAULT 0,
    fingerprint TEXT,              -- instances the published output was made from
    updated REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,  -- conversions started and not finished with a result (deaths, restarts)
    stale INTEGER NOT NULL DEFAULT 0      -- 1: the published output is from replaced instances; never adopt it
);
"""
SERIES_FIELDS = ("uid", "study_uid", "state", "output", "error", "conversions", "fingerprint", "attempts", "stale")
MIGRATIONS = (("attempts", "INTEGER NOT NULL DEFAULT 0"), ("stale", "INTEGER NOT NULL DEFAULT 0"))
"""Columns added since the first schema: added to an existing database at open."""


@dataclass
class FileRow:
    rel: str
    location: str
    size: int
    mtime_ns: int
    kind: str
    series_uid: str | None
    header: Any
    reason: str | None
    state: str


class StateStore:
    def __init__(self, path: Path, readonly: bool = False) -> None:
        self.path = path
        self.readonly = readonly
        self.fresh = False
        """The database started empty (new, missing or damaged): the state is rebuilt from the folders."""
        if readonly:
            if path.exists():
                self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            else:
                self.db = sqlite3.connect(":memory:")
                self.db.executescript(SCHEMA)
        else:
            self.db, self.fresh = connect(path)
            self.db.executescript(SCHEMA)
            self._migrate()

    def _migrate(self) -> None:
        have = {row[1] for row in self.db.execute("PRAGMA table_info(series)")}
        for column, declaration in MIGRATIONS:
            if column not in have:
                self.db.execute(f"ALTER TABLE series ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        self.db.close()

    # files
    def files(self, rels: list[str] | None = None) -> dict[str, FileRow]:
        """Rows of files still in the inbox (all, or the given ones), without the cached headers.

        Archived files keep their rows (a re-opened series needs them) but a scan never needs
        them, so a node that has archived millions of files still scans in constant time.
        """
        query = "SELECT rel, location, size, mtime_ns, kind, series_uid, NULL, reason, state FROM files"
        if rels is None:
            rows = self.db.execute(query + " WHERE state = 'pending'")
        else:
            rows = []
            for i in range(0, len(rels), 500):
                chunk = rels[i : i + 500]
                rows += self.db.execute(query + f" WHERE rel IN ({','.join('?' * len(chunk))})", chunk).fetchall()
        return {r[0]: FileRow(*r) for r in rows}

    def series_files(self, uid: str) -> list[FileRow]:
        rows = self.db.execute(
            "SELECT rel, location, size, mtime_ns, kind, series_uid, header, reason, state FROM files WHERE series_uid=?", (uid,)
        )
        return [FileRow(*r) for r in rows]

    @staticmethod
    def header(row: FileRow) -> Any:
        return pickle.loads(row.header) if row.header is not None else None

    def put_file(self, rel: str, location: str, size: int, mtime_ns: int, kind: str, series_uid: str | None = None,
                 header: Any = None, reason: str | None = None, state: str = "pending") -> None:
        if self.readonly:
            return
        blob = header if isinstance(header, bytes) or header is None else pickle.dumps(header)
        self.db.execute(
            "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?,?,?)",
            (rel, location, size, mtime_ns, kind, series_uid, blob, reason, state, time.time()),
        )

    def move_file(self, rel: str, new_rel: str, location: str, state: str) -> None:
        if self.readonly:
            return
        with self.db:
            self.db.execute("DELETE FROM files WHERE rel=?", (new_rel,))
            self.db.execute("UPDATE files SET rel=?, location=?, state=?, updated=? WHERE rel=?", (new_rel, location, state, time.time(), rel))

    def forget_files(self, rels: list[str]) -> None:
        if self.readonly or not rels:
            return
        self.db.executemany("DELETE FROM files WHERE rel=?", [(r,) for r in rels])

    # series
    def series(self, uid: str) -> dict[str, Any] | None:
        row = self.db.execute(f"SELECT {', '.join(self._columns())} FROM series WHERE uid=?", (uid,)).fetchone()
        return None if row is None else self._series_row(row)

    def all_series(self) -> Iterator[dict[str, Any]]:
        for row in self.db.execute(f"SELECT {', '.join(self._columns())} FROM series").fetchall():
            yield self._series_row(row)

    def _columns(self) -> tuple[str, ...]:
        """The series columns this database has (a read-only old database lacks the migrated ones)."""
        if not hasattr(self, "_have"):
            self._have = {row[1] for row in self.db.execute("PRAGMA table_info(series)")}
        return tuple(f for f in SERIES_FIELDS if f in self._have)

    def _series_row(self, row: tuple) -> dict[str, Any]:
        values = dict.fromkeys(SERIES_FIELDS, 0)
        values.update(zip(self._columns(), row))
        return values

    def set_series(self, uid: str, **values: Any) -> None:
        if self.readonly:
            return
        current = self.series(uid)
        if current is None:
            current = {"uid": uid, "study_uid": None, "state": "pending", "output": None, "error": None, "conversions": 0,
                       "fingerprint": None, "attempts": 0, "stale": 0}
            current.update(values)
            self.db.execute(f"INSERT INTO series ({', '.join(SERIES_FIELDS)}, updated) VALUES ({','.join('?' * (len(SERIES_FIELDS) + 1))})",
                            (*(current[f] for f in SERIES_FIELDS), time.time()))
            return
        current.update(values)
        self.db.execute(f"UPDATE series SET {', '.join(f'{f}=?' for f in SERIES_FIELDS[1:])}, updated=? WHERE uid=?",
                        (*(current[f] for f in SERIES_FIELDS[1:]), time.time(), uid))

    def reset_in_flight(self) -> list[str]:
        """Series left 'converting' by a crash go back to 'pending'."""
        cur = self.db.execute("SELECT uid FROM series WHERE state='converting'")
        uids = [r[0] for r in cur.fetchall()]
        if uids and not self.readonly:
            self.db.execute("UPDATE series SET state='pending' WHERE state='converting'")
        return uids

"""The test server's database: sqlite with DearDiary's tables, constraints and id sequences.

One connection is shared by every request thread and guarded by a lock; the connection runs in
autocommit mode, so each statement commits on its own and there are no multi-statement
transactions, like the real server. Ids come from per-table sequences (integer build) that are
drawn before the insert, so a refused insert burns an id; the UUID build draws random UUIDs.

Tables and columns follow the upstream schema; the JSON field names are the column names.
Booleans are stored as 0/1, date-times as fixed-width text ``YYYY-MM-DDTHH:MM:SS.sss``.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Id = int | str

TABLES = (
    "user",
    "project",
    "user_permission",
    "experiment",
    "iteration",
    "parameter",
    "metric",
    "resource",
    "tag",
    "project_tag",
    "experiment_tag",
    "iteration_tag",
    "model",
    "model_version",
)

# Id columns have no declared type, so sqlite stores integers and UUID text as given.
_SCHEMA = """
CREATE TABLE IF NOT EXISTS _meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS _sequence (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS "user" (
    id PRIMARY KEY NOT NULL,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    username TEXT NOT NULL UNIQUE CHECK (username <> ''),
    password_hash TEXT NOT NULL,
    is_admin INTEGER NOT NULL DEFAULT 0,
    created_date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS project (
    id PRIMARY KEY NOT NULL,
    name TEXT NOT NULL CHECK (name <> ''),
    description TEXT NOT NULL DEFAULT '',
    created_date TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS user_permission (
    id PRIMARY KEY NOT NULL,
    user_id NOT NULL REFERENCES "user" (id),
    project_id NOT NULL REFERENCES project (id),
    create_permission INTEGER NOT NULL,
    read_permission INTEGER NOT NULL,
    update_permission INTEGER NOT NULL,
    delete_permission INTEGER NOT NULL,
    UNIQUE (user_id, project_id)
);
CREATE TABLE IF NOT EXISTS experiment (
    id PRIMARY KEY NOT NULL,
    project_id NOT NULL REFERENCES project (id),
    status_id INTEGER NOT NULL CHECK (status_id BETWEEN 1 AND 3),
    name TEXT NOT NULL CHECK (name <> ''),
    description TEXT NOT NULL DEFAULT '',
    created_date TEXT NOT NULL,
    end_date TEXT
);
CREATE TABLE IF NOT EXISTS iteration (
    id PRIMARY KEY NOT NULL,
    experiment_id NOT NULL REFERENCES experiment (id),
    parent_iteration_id REFERENCES iteration (id),
    notes TEXT NOT NULL DEFAULT '',
    created_date TEXT NOT NULL,
    end_date TEXT,
    status_id INTEGER NOT NULL DEFAULT 1 CHECK (status_id BETWEEN 1 AND 4),
    error_message TEXT NOT NULL DEFAULT '',
    julia_version TEXT NOT NULL DEFAULT '',
    git_sha TEXT NOT NULL DEFAULT '',
    git_dirty INTEGER NOT NULL DEFAULT 0,
    entrypoint TEXT NOT NULL DEFAULT '',
    project_toml TEXT NOT NULL DEFAULT '',
    manifest_toml TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS iteration_experiment ON iteration (experiment_id);
CREATE INDEX IF NOT EXISTS iteration_parent ON iteration (parent_iteration_id);
CREATE TABLE IF NOT EXISTS parameter (
    id PRIMARY KEY NOT NULL,
    iteration_id NOT NULL REFERENCES iteration (id),
    key TEXT NOT NULL CHECK (key <> ''),
    value TEXT NOT NULL CHECK (value <> '')
);
CREATE INDEX IF NOT EXISTS parameter_iteration ON parameter (iteration_id);
CREATE TABLE IF NOT EXISTS metric (
    id PRIMARY KEY NOT NULL,
    iteration_id NOT NULL REFERENCES iteration (id),
    key TEXT NOT NULL CHECK (key <> ''),
    value REAL NOT NULL,
    step INTEGER NOT NULL,
    recorded_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metric_iteration_key ON metric (iteration_id, key, step);
CREATE INDEX IF NOT EXISTS metric_iteration_step ON metric (iteration_id, step);
CREATE TABLE IF NOT EXISTS resource (
    id PRIMARY KEY NOT NULL,
    experiment_id NOT NULL REFERENCES experiment (id),
    name TEXT NOT NULL CHECK (name <> ''),
    description TEXT NOT NULL DEFAULT '',
    created_date TEXT NOT NULL,
    updated_date TEXT,
    backend TEXT NOT NULL,
    uri TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    content_hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS resource_experiment ON resource (experiment_id);
CREATE TABLE IF NOT EXISTS tag (
    id PRIMARY KEY NOT NULL,
    value TEXT NOT NULL UNIQUE CHECK (value <> '')
);
CREATE TABLE IF NOT EXISTS project_tag (
    id PRIMARY KEY NOT NULL,
    project_id NOT NULL REFERENCES project (id),
    tag_id NOT NULL REFERENCES tag (id),
    UNIQUE (project_id, tag_id)
);
CREATE TABLE IF NOT EXISTS experiment_tag (
    id PRIMARY KEY NOT NULL,
    experiment_id NOT NULL REFERENCES experiment (id),
    tag_id NOT NULL REFERENCES tag (id),
    UNIQUE (experiment_id, tag_id)
);
CREATE TABLE IF NOT EXISTS iteration_tag (
    id PRIMARY KEY NOT NULL,
    iteration_id NOT NULL REFERENCES iteration (id),
    tag_id NOT NULL REFERENCES tag (id),
    UNIQUE (iteration_id, tag_id)
);
CREATE TABLE IF NOT EXISTS model (
    id PRIMARY KEY NOT NULL,
    project_id NOT NULL REFERENCES project (id),
    name TEXT NOT NULL CHECK (name <> ''),
    description TEXT NOT NULL DEFAULT '',
    created_date TEXT NOT NULL,
    updated_date TEXT,
    UNIQUE (project_id, name)
);
CREATE TABLE IF NOT EXISTS model_version (
    id PRIMARY KEY NOT NULL,
    model_id NOT NULL REFERENCES model (id),
    version INTEGER NOT NULL CHECK (version > 0),
    iteration_id NOT NULL REFERENCES iteration (id),
    resource_id REFERENCES resource (id),
    stage_id INTEGER NOT NULL DEFAULT 1 CHECK (stage_id BETWEEN 1 AND 4),
    description TEXT NOT NULL DEFAULT '',
    created_date TEXT NOT NULL,
    updated_date TEXT,
    UNIQUE (model_id, version)
);
"""


class ConstraintError(Exception):
    """A statement refused by a constraint; ``kind`` is unique, check, foreign_key or not_null."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind


def _constraint_kind(exc: sqlite3.IntegrityError) -> str:
    """Name the constraint behind an integrity error from sqlite's message."""
    text = str(exc)
    if text.startswith("UNIQUE"):
        return "unique"
    if text.startswith("CHECK"):
        return "check"
    if text.startswith("FOREIGN KEY"):
        return "foreign_key"
    if text.startswith("NOT NULL"):
        return "not_null"
    return "other"


class Database:
    """The shared connection, its lock and the id scheme.

    Args:
        path: The sqlite file (created when missing).
        id_kind: ``"int"`` or ``"uuid"``; must match the scheme of an existing file.
    """

    def __init__(self, path: Path, id_kind: str) -> None:
        self.path = path
        self.id_kind = id_kind
        self._lock = threading.RLock()
        self._conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row

        with self._lock:
            self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA synchronous = OFF")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._conn.executescript(_SCHEMA)
            self._conn.executemany(
                "INSERT OR IGNORE INTO _sequence (name, value) VALUES (?, 0)",
                [(table,) for table in TABLES],
            )

        stored = self.get_meta("id_kind")
        if stored is None:
            self.set_meta("id_kind", id_kind)
        elif stored != id_kind:
            msg = (
                f"the database {path} holds {stored} ids but the server was asked for "
                f"{id_kind} ids; use another data_dir"
            )
            raise ValueError(msg)

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._conn.close()

    # --- statements -------------------------------------------------------------------------

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Run a query and return its rows as dicts."""
        with self._lock:
            cursor = self._conn.execute(sql, tuple(params))
            return [dict(row) for row in cursor.fetchall()]

    def row(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """Run a query and return its first row, or ``None``."""
        found = self.rows(sql, params)
        return found[0] if found else None

    def scalar(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run a query and return the first column of its first row (``None`` when empty)."""
        with self._lock:
            found = self._conn.execute(sql, tuple(params)).fetchone()
        return None if found is None else found[0]

    def write(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one statement (committed on its own) and return the number of rows it changed.

        Raises:
            ConstraintError: A constraint refused the statement.
        """
        with self._lock:
            try:
                cursor = self._conn.execute(sql, tuple(params))
            except sqlite3.IntegrityError as exc:
                raise ConstraintError(_constraint_kind(exc), str(exc)) from exc
            return cursor.rowcount

    def next_id(self, table: str) -> Id:
        """Draw the next id of ``table`` (a statement of its own, so a failed insert burns it)."""
        if self.id_kind == "uuid":
            return str(uuid.uuid4())
        with self._lock:
            found = self._conn.execute(
                "UPDATE _sequence SET value = value + 1 WHERE name = ? RETURNING value", (table,)
            ).fetchone()
        return int(found[0])

    def insert(self, table: str, values: dict[str, Any], *, ignore: bool = False) -> Id:
        """Insert a row with a freshly drawn id and return that id.

        Args:
            table: The table.
            values: Column values, without ``id``.
            ignore: Skip the row silently on a conflict (``INSERT OR IGNORE``); the id is still
                drawn and returned.

        Raises:
            ConstraintError: A constraint refused the row (the id is burnt).
        """
        new_id = self.next_id(table)
        columns = ["id", *values]
        placeholders = ", ".join("?" for _ in columns)
        names = ", ".join(f'"{column}"' for column in columns)
        verb = "INSERT OR IGNORE" if ignore else "INSERT"
        self.write(
            f'{verb} INTO "{table}" ({names}) VALUES ({placeholders})', [new_id, *values.values()]
        )
        return new_id

    def update(self, table: str, row_id: Id, values: dict[str, Any]) -> int:
        """``UPDATE table SET ... WHERE id = ?``; an empty ``values`` fails like the real server.

        Raises:
            ConstraintError: A constraint refused the change, or ``values`` is empty (kind
                ``"syntax"``: the real server builds an empty ``SET`` list and the database
                refuses the statement).
        """
        if not values:
            raise ConstraintError("syntax", "empty SET list")
        assignments = ", ".join(f'"{column}" = ?' for column in values)
        return self.write(
            f'UPDATE "{table}" SET {assignments} WHERE id = ?', [*values.values(), row_id]
        )

    def get(self, table: str, row_id: Id) -> dict[str, Any] | None:
        """Fetch one row by id."""
        return self.row(f'SELECT * FROM "{table}" WHERE id = ?', (row_id,))

    def delete(self, table: str, row_id: Id) -> int:
        """Delete one row by id and return the number of rows removed."""
        return self.write(f'DELETE FROM "{table}" WHERE id = ?', (row_id,))

    # --- server metadata --------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        """Read a server setting kept in the database (id scheme, token secret)."""
        value = self.scalar("SELECT value FROM _meta WHERE key = ?", (key,))
        return None if value is None else str(value)

    def set_meta(self, key: str, value: str) -> None:
        """Store a server setting in the database."""
        self.write("INSERT OR REPLACE INTO _meta (key, value) VALUES (?, ?)", (key, value))

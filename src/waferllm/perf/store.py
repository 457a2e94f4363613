"""A results store for sweeps: one DuckDB table keyed by each point's hash, written as results arrive.

Every write is one committed transaction, so a sweep that is stopped (Ctrl-C, a kill) keeps every result
written before it stopped, and a rerun reads the keys back and skips them. `INSERT OR IGNORE` on the
primary key means a key is never stored twice, whatever happens.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from waferllm import WaferError

TABLE = "results"


class StoreError(WaferError):
    """The store cannot be opened or does not hold sweep results."""


class Store:
    """A DuckDB file of one table: `columns` (name, DuckDB type), the first the primary key."""

    def __init__(self, path: str | Path, columns: Sequence[tuple[str, str]]):
        import duckdb

        self.path, self.columns = Path(path), list(columns)
        if not self.path.resolve().parent.is_dir():
            raise StoreError(f"--out {str(path)!r}: folder {str(self.path.resolve().parent)!r} does not exist")
        try:
            self.db = duckdb.connect(str(self.path))
        except duckdb.Error as e:
            raise StoreError(f"cannot open the store {str(path)!r}: {_first_line(e)}") from None
        key, key_type = self.columns[0]
        cols = ", ".join(f'"{n}" {t}' for n, t in self.columns[1:])
        try:
            self.db.execute(f'CREATE TABLE IF NOT EXISTS {TABLE} ("{key}" {key_type} PRIMARY KEY, {cols})')
            have = {r[0] for r in self.db.execute(f"DESCRIBE {TABLE}").fetchall()}
        except duckdb.Error as e:
            self.db.close()
            raise StoreError(f"{str(path)!r} is not a sweep store: {_first_line(e)}") from None
        if key not in have:
            self.db.close()
            raise StoreError(f"{str(path)!r} holds a table {TABLE!r} without a {key!r} column: not a sweep store")
        for n, t in self.columns[1:]:  # a store from an older version gains the new columns (NULL for old rows)
            if n not in have:
                self.db.execute(f'ALTER TABLE {TABLE} ADD COLUMN "{n}" {t}')

    def keys(self) -> set[str]:
        """Every stored key."""
        return {r[0] for r in self.db.execute(f'SELECT "{self.columns[0][0]}" FROM {TABLE}').fetchall()}

    def write(self, rows: Iterable[dict]) -> int:
        """Store rows (dicts by column name; missing columns are NULL, non-finite numbers too) in one
        transaction; returns how many were new (a key already stored is left as it is). The batch travels
        as one JSON text (DuckDB's parameter binding costs a failed pandas import per value without pandas)."""
        rows = [{n: _finite(r.get(n)) for n, _ in self.columns} for r in rows]
        if not rows:
            return 0
        struct = json.dumps([{n: t for n, t in self.columns}])
        before = self.count()
        self.db.execute("BEGIN TRANSACTION")
        try:
            self.db.execute(f"INSERT OR IGNORE INTO {TABLE} BY NAME "
                            "SELECT unnest(from_json(?::JSON, ?), recursive := true)", [json.dumps(rows), struct])
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return self.count() - before

    def count(self) -> int:
        return self.db.execute(f"SELECT count(*) FROM {TABLE}").fetchone()[0]

    def rows(self, keys: Iterable[str] | None = None) -> list[dict]:
        """Stored rows as dicts (those of `keys` only, if given), in key order."""
        cur = self.db.execute(f'SELECT * FROM {TABLE} ORDER BY "{self.columns[0][0]}"')
        names = [d[0] for d in cur.description]
        out = [dict(zip(names, r)) for r in cur.fetchall()]
        if keys is None:
            return out
        want = set(keys)
        return [r for r in out if r[names[0]] in want]

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__

"""Results: :class:`QueryResult` (rows, as Arrow) and :class:`ExecuteResult` (what a statement did)."""

from __future__ import annotations

import html
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pyarrow as pa


class QueryResult:
    """Rows of a query or of one subscription batch, held as a ``pyarrow.Table`` (zero-copy from
    the engine). Exposes ``__arrow_c_stream__``, so pyarrow, polars, pandas and DuckDB read it
    directly. Iterating yields rows as tuples, as ``fetch*`` return them (DB-API style)."""

    def __init__(self, table: pa.Table):
        self._table = table
        self._cursor = 0

    @classmethod
    def _from_native(cls, native) -> "QueryResult":
        return cls(pa.table(native))

    @classmethod
    def _from_batch(cls, native_batch) -> "QueryResult":
        return cls(pa.Table.from_batches([pa.record_batch(native_batch)]))

    # --- Arrow and dataframes
    def to_arrow(self) -> pa.Table:
        return self._table

    arrow = to_arrow

    def to_pandas(self):
        return self._table.to_pandas()

    df = to_pandas

    def to_polars(self, lazy: bool = False):
        """A polars DataFrame (``lazy=True``: a LazyFrame over it)."""
        import polars as pl

        df = pl.from_arrow(self._table)
        return df.lazy() if lazy else df

    pl = to_polars

    def to_df(self):
        """A dataframe of whichever library is installed: pandas, else polars, else the
        ``pyarrow.Table``."""
        try:
            import pandas  # noqa: F401

            return self.to_pandas()
        except ImportError:
            pass
        try:
            return self.to_polars()
        except ImportError:
            return self._table

    def to_dicts(self) -> Dict[str, List[Any]]:
        """The columns as a dict of lists (``{"ts": [1, 2], …}``), as the established
        ``laminardb`` package returns them; :meth:`to_pylist` gives a list of row dicts."""
        return self._table.to_pydict()

    def to_pylist(self) -> List[Dict[str, Any]]:
        """The rows as a list of dicts (``[{"ts": 1, …}, …]``)."""
        return self._table.to_pylist()

    def __arrow_c_stream__(self, requested_schema=None):
        return self._table.__arrow_c_stream__(requested_schema)

    def __arrow_c_schema__(self):
        return self._table.schema.__arrow_c_schema__()

    # --- DB-API style fetching
    def _rows(self, start: int, stop: int) -> List[Tuple]:
        part = self._table.slice(start, max(0, stop - start)).to_pylist()
        return [tuple(r.values()) for r in part]

    def fetchall(self) -> List[Tuple]:
        rows = self._rows(self._cursor, self._table.num_rows)
        self._cursor = self._table.num_rows
        return rows

    def fetchone(self) -> Optional[Tuple]:
        rows = self.fetchmany(1)
        return rows[0] if rows else None

    def fetchmany(self, n: int = 1) -> List[Tuple]:
        rows = self._rows(self._cursor, min(self._table.num_rows, self._cursor + n))
        self._cursor += len(rows)
        return rows

    # --- shape
    @property
    def num_rows(self) -> int:
        return self._table.num_rows

    @property
    def num_columns(self) -> int:
        return self._table.num_columns

    @property
    def columns(self) -> List[str]:
        return list(self._table.column_names)

    @property
    def num_batches(self) -> int:
        """The record batches the rows arrived in."""
        return len(self._table.to_batches())

    @property
    def schema(self) -> pa.Schema:
        return self._table.schema

    def __len__(self) -> int:
        return self._table.num_rows

    def __iter__(self) -> Iterator[Tuple]:
        """The rows as tuples (as ``fetchall`` returns them)."""
        return iter(self._rows(0, self._table.num_rows))

    def show(self, max_rows: int = 20) -> None:
        """Prints the first ``max_rows`` rows as a table."""
        print(self._format(max_rows))

    def _format(self, max_rows: int = 20) -> str:
        rows = self._table.slice(0, max_rows).to_pylist()
        cols = self.columns
        cells = [[str(r[c]) for c in cols] for r in rows]
        widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
        line = "+".join("-" * (w + 2) for w in widths)
        out = [" | ".join(c.ljust(w) for c, w in zip(cols, widths)), line]
        out += [" | ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
        if self._table.num_rows > max_rows:
            out.append(f"… {self._table.num_rows - max_rows} more rows")
        return "\n".join(out)

    def __repr__(self) -> str:
        return f"QueryResult(rows={self.num_rows}, columns={self.num_columns})\n{self._format(10)}"

    def _repr_html_(self) -> str:
        rows = self._table.slice(0, 50).to_pylist()
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in self.columns) + "</tr>" for r in rows
        )
        more = f"<p>{self.num_rows - 50} more rows</p>" if self.num_rows > 50 else ""
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


class ExecuteResult:
    """What :meth:`Connection.execute` did.

    Attributes:
        result_type: ``"ddl"``, ``"rows_affected"`` (INSERT) or ``"query"`` (rows came back).
        rows_affected: rows inserted by an INSERT, else 0.
        ddl_type: ``"CREATE SOURCE"``, ``"CREATE STREAM"``, ``"DROP SOURCE"``, ``"SELECT"``, …
        ddl_object: the object the statement named, if any.
        message: the engine's summary (``"created source 'trades'"``).
    """

    def __init__(self, rows_affected: int, message: str, native_rows, ddl_type: str, ddl_object: Optional[str]):
        self.rows_affected = rows_affected
        self.message = message
        self.ddl_type = ddl_type
        self.ddl_object = ddl_object
        self._rows = QueryResult._from_native(native_rows) if native_rows is not None else None
        if self._rows is not None:
            self.result_type = "query"
        elif ddl_type == "INSERT":
            self.result_type = "rows_affected"
        else:
            self.result_type = "ddl"

    def to_query_result(self) -> QueryResult:
        """The rows the statement returned (an empty result for DDL)."""
        return self._rows if self._rows is not None else QueryResult(pa.table({}))

    def int(self) -> int:
        return self.rows_affected

    def __int__(self) -> int:
        return self.rows_affected

    def __repr__(self) -> str:
        return f"ExecuteResult({self.result_type}, {self.ddl_type}, rows_affected={self.rows_affected}, message={self.message!r})"

"""Turning user data into Arrow for the engine: anything with ``__arrow_c_stream__`` or
``__arrow_c_array__`` (pyarrow, polars, nanoarrow, …) goes through as is (zero-copy); pandas,
dicts and lists of dicts are converted with the source schema, so a bad value is reported with
its column."""

from __future__ import annotations

import io
import json
from typing import Any, Dict, List, Tuple

import pyarrow as pa

from . import codes
from ._errors import BatchSchemaError


def _mismatch(msg: str) -> BatchSchemaError:
    return BatchSchemaError(msg, codes.BATCH_SCHEMA_MISMATCH, "INVALID_DATA")


def _column(values: Any, t: pa.DataType) -> pa.Array:
    try:
        return pa.array(values, type=t)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError):
        # Text for a temporal or numeric column (JSON has no timestamp type): parse it the way
        # Arrow casts strings ('2024-01-01T00:00:10', '3.5').
        if any(isinstance(v, str) for v in values):
            return pa.array(values, type=pa.string()).cast(t)
        raise


def columns_to_table(cols: Dict[str, Any], schema: pa.Schema) -> pa.Table:
    names = set(schema.names)
    for name in cols:
        if name not in names:
            raise _mismatch(f"column '{name}' is not in the source schema (columns: {', '.join(schema.names)})")
    arrays, fields = [], []
    for f in schema:
        if f.name not in cols:
            continue  # the engine reports a missing column by name
        try:
            arrays.append(_column(cols[f.name], f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError) as e:
            raise _mismatch(f"column '{f.name}' ({f.type}): {e}") from e
        fields.append(pa.field(f.name, f.type))
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        sizes = ", ".join(f"'{f.name}': {len(a)}" for f, a in zip(fields, arrays))
        raise _mismatch(f"columns of different lengths ({sizes}): every column needs one value per row")
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def rows_to_table(rows: List[Dict[str, Any]], schema: pa.Schema) -> pa.Table:
    keys: List[str] = []
    for r in rows:
        if not isinstance(r, dict):
            raise TypeError(f"a list of rows must hold dicts, not {type(r).__name__}")
        for k in r:
            if k not in keys:
                keys.append(k)
    return columns_to_table({k: [r.get(k) for r in rows] for k in keys}, schema)


def to_arrow(data: Any, schema: pa.Schema) -> Tuple[str, Any]:
    """("stream", obj) or ("array", obj) for an object exposing that PyCapsule protocol."""
    from .result import QueryResult

    if isinstance(data, QueryResult):
        data = data.to_arrow()
    mod = type(data).__module__
    if mod.startswith("pandas"):
        data = pa.Table.from_pandas(data, preserve_index=False)
    elif mod.startswith("polars") and hasattr(data, "to_arrow"):
        data = data.to_arrow()
    if hasattr(data, "__arrow_c_stream__"):
        return "stream", data
    if hasattr(data, "__arrow_c_array__"):
        return "array", data
    if isinstance(data, dict):
        if data and all(isinstance(v, (list, tuple)) or hasattr(v, "__len__") and not isinstance(v, (str, bytes)) for v in data.values()):
            return "stream", columns_to_table(data, schema)
        return "stream", rows_to_table([data], schema)
    if isinstance(data, (list, tuple)):
        if not data:
            raise TypeError("insert got an empty list: nothing to insert (pass at least one row)")
        return "stream", rows_to_table(list(data), schema)
    raise TypeError(
        "insert takes a dict, a dict of lists, a list of dicts, a pyarrow RecordBatch/Table, a pandas or "
        f"polars DataFrame, or an object with __arrow_c_stream__/__arrow_c_array__; got {type(data).__name__}"
    )


def write_into(native_writer, data: Any, schema: pa.Schema) -> int:
    kind, obj = to_arrow(data, schema)
    if kind == "stream":
        return native_writer.write_stream(obj.__arrow_c_stream__())
    s, a = obj.__arrow_c_array__()
    return native_writer.write_array(s, a)


def insert_into(native_db, name: str, data: Any, schema: pa.Schema) -> int:
    kind, obj = to_arrow(data, schema)
    if kind == "stream":
        return native_db.insert_stream(name, obj.__arrow_c_stream__())
    s, a = obj.__arrow_c_array__()
    return native_db.insert_array(name, s, a)


def json_to_table(text: str, schema: pa.Schema) -> pa.Table:
    """A JSON array of objects, one object, or newline-delimited objects."""
    text = text.strip()
    if not text:
        return columns_to_table({}, schema)
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        try:
            parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as e:
            raise _mismatch(f"invalid JSON: {e}") from e
    if isinstance(parsed, dict):
        parsed = [parsed]
    if not isinstance(parsed, list):
        raise _mismatch("JSON must be an object, an array of objects, or one object per line")
    return rows_to_table(parsed, schema)


def csv_to_table(text: str, schema: pa.Schema) -> pa.Table:
    """CSV with a header row; columns are read as the source's types."""
    import pyarrow.csv as pacsv

    types = {f.name: f.type for f in schema}
    try:
        return pacsv.read_csv(io.BytesIO(text.encode()), convert_options=pacsv.ConvertOptions(column_types=types))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise _mismatch(f"CSV does not match the source schema: {e}") from e

"""Numeric error codes of the ``laminardb`` API (``LaminarError.code``).

The numbers are those of the established ``laminardb`` package, kept for compatibility. Every
exception also carries ``.status``, the status name of the C ABI (``"NOT_FOUND"``, …), which is the
same in every language LaminarDB supports.
"""

CONNECTION_FAILED = 100
CONNECTION_CLOSED = 101
CONNECTION_IN_USE = 102
TABLE_NOT_FOUND = 200
TABLE_EXISTS = 201
SCHEMA_MISMATCH = 202
INVALID_SCHEMA = 203
INGESTION_FAILED = 300
WRITER_CLOSED = 301
BATCH_SCHEMA_MISMATCH = 302
QUERY_FAILED = 400
SQL_PARSE_ERROR = 401
QUERY_CANCELLED = 402
SUBSCRIPTION_FAILED = 500
SUBSCRIPTION_CLOSED = 501
SUBSCRIPTION_TIMEOUT = 502
INTERNAL_ERROR = 900
SHUTDOWN = 901

__all__ = [n for n in dir() if n.isupper()]

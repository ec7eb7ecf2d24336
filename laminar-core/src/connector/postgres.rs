//! The PostgreSQL connectors (cargo feature `postgres`): the `POSTGRES` sink (`sink.rs`: a
//! stream's results into a table, exactly once through an offsets table; options in the README)
//! and `POSTGRES_CDC`, a PostgreSQL table captured into a
//! LaminarDB table — its snapshot, then every change from a logical replication slot with the
//! built-in `pgoutput` plugin, applied one source transaction at a time.
//!
//! `CREATE TABLE t (…, PRIMARY KEY (…)) FROM POSTGRES_CDC WITH (…)`; the primary key must be the
//! captured table's (its replica identity), because deletes carry only the key.
//!
//! | option | meaning |
//! |---|---|
//! | `hostname` | the server (default `127.0.0.1`) |
//! | `port` | default 5432 |
//! | `username` | a role with the `REPLICATION` attribute that may read the table (and create the publication unless it exists) |
//! | `password` | its password (SCRAM-SHA-256, MD5 or cleartext authentication; no TLS: loopback or a trusted network) |
//! | `database-name` | the database |
//! | `schema-name` | default `public` |
//! | `table-name` | the captured table; every declared column must be one of its columns (by name) |
//! | `slot.name` | the logical replication slot (default `laminardb_<LaminarDB table name, lowercased>`); one reader per slot |
//! | `publication.name` | the publication (default `laminardb_<LaminarDB table name, lowercased>`), created `FOR TABLE` the captured table unless it exists |
//! | `scan.startup.mode` | `initial` (default: the table's rows as of the slot's creation, then its changes) or `latest-offset` (only changes after the slot's creation) |
//!
//! How it works. A fresh start (no checkpoint position) creates the slot with
//! `CREATE_REPLICATION_SLOT … LOGICAL pgoutput EXPORT_SNAPSHOT` on a replication connection,
//! reads the table in a `REPEATABLE READ` transaction on that exported snapshot, hands the rows
//! over as one batch that first clears the LaminarDB table, and streams from the slot's
//! consistent point. Each committed transaction's changes reach the table together, at the
//! position (LSN) after its commit record; that LSN goes into the checkpoint, and only the LSN
//! of the oldest checkpoint the database keeps (`checkpoints_retained`, which recovery may fall
//! back to) is reported to the server as flushed, so the slot keeps every change a restart may
//! need. A restart streams from the checkpoint's LSN, skipping transactions that
//! ended at or before it. An update that changes the key deletes the old key's row; a TRUNCATE
//! empties the table; a TOASTed value an update did not touch is taken from the old row when the
//! change carries it (`REPLICA IDENTITY FULL`), else read from the server's current row (a later
//! change of that value follows in the stream, so the table converges). A lost connection (a
//! server restart, a network error) is retried like every connector's `IO` errors: both
//! connections are opened again and the stream resumes after the last transaction handed over.
//! While the table has no changes, the server's position (from its keepalives) is handed over
//! now and then as an empty batch, so checkpoints let the slot release WAL that other tables
//! wrote.
//!
//! Type mapping (PostgreSQL's text form cast to the declared column's type): integers, `numeric`
//! (to `DECIMAL` or `DOUBLE`), `real`/`double precision`, `text`/`varchar`/`char`, `bool`,
//! `bytea` (to `BYTES`), `date` (to `DATE`), `timestamp` and `timestamptz` (to `TIMESTAMP`; the
//! session runs in UTC), `json`/`jsonb`/`uuid`/anything else as text into `VARCHAR`. A declared `LIST` or
//! struct column is refused at CREATE; declare arrays `VARCHAR` to get their text form.
//!
//! Not yet: a schema change on the server other than a dropped or renamed captured column
//! (which fails the table with a message saying to create it again) is not detected.

mod pgoutput;
mod sink;
mod source;
mod wire;

pub(crate) use sink::PgSink;
pub(crate) use source::PgCdcSource;

/// Decodes `b` as a replication frame and, for XLogData, its pgoutput message; else as a bare
/// pgoutput message (the fuzz entry point). Whether it decoded.
pub(crate) fn decode_replication(b: &[u8]) -> bool {
    match pgoutput::frame(b) {
        Ok(pgoutput::Frame::XLogData { data, .. }) => pgoutput::decode(data).is_ok(),
        Ok(_) => true,
        Err(_) => pgoutput::decode(b).is_ok(),
    }
}

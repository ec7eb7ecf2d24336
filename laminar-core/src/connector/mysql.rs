//! The MYSQL_CDC connector: a MariaDB or MySQL table captured into a LaminarDB table (its
//! snapshot, then its changes from the binary log), on a client of our own (`mysql/wire.rs`: the
//! handshake with `mysql_native_password`, text queries, the binlog dump) and a decoder of ROW
//! events (`mysql/binlog.rs`), without a MySQL client crate: nothing to compile but this.
//!
//! | option | meaning |
//! |---|---|
//! | `hostname`, `port` | the server (default `127.0.0.1`, `3306`) |
//! | `username`, `password` | a user with SELECT on the table and REPLICATION SLAVE, REPLICATION CLIENT (and RELOAD on MySQL, for the snapshot's read lock) |
//! | `database-name`, `table-name` | the captured table |
//! | `server-id` | the replica id the binlog dump uses (default: derived from the source, database and table names); unique among the server's replicas |
//! | `scan.startup.mode` | `initial` (default: the snapshot, then the binlog from its position) or `latest-offset` (the binlog from now) |

mod binlog;
mod source;
mod wire;

pub(crate) use source::MySqlCdcSource;

/// Parses `events` (binlog events without checksums) in order with one parser, capturing every
/// table (the fuzz entry point). How many parsed.
pub(crate) fn parse_binlog(events: &[&[u8]]) -> usize {
    let mut p = binlog::Parser::new(false);
    let mut ok = 0;
    for ev in events {
        if let Ok((_, e)) = p.parse(ev) {
            ok += 1;
            if let binlog::Event::TableMap { table_id } = e {
                p.capture(table_id, true);
            }
        }
    }
    ok
}

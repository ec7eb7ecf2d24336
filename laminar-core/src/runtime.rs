//! Building blocks the database handle (`db`) runs streams with, none of which depends on it:
//! checking pushed batches against a source schema and the event-time range (`ingest`, which
//! connector sources use too), subscriber buffers with pull and push delivery (`subscription`),
//! the stored result of a materialized view (`mv`) and the current rows of a table (`table`). The
//! source queues, the driver thread and the per-stream state are in `db`.

pub(crate) mod ingest;
pub(crate) mod mv;
pub mod subscription;
pub(crate) mod table;

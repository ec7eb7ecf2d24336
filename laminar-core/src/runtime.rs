//! The runtime: source queues, the pipeline driver thread, subscriptions and materialized views.

pub(crate) mod ingest;
pub(crate) mod mv;
pub mod subscription;
pub(crate) mod table;

//! The runtime: source queues, the pipeline driver thread, subscriptions and materialized views.

pub(crate) mod ingest;
pub(crate) mod mv;
pub(crate) mod table;
pub mod subscription;

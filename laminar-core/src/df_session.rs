//! The DataFusion session every part of the engine plans and evaluates SQL with.
//!
//! [`session_context`] builds a fresh `SessionContext` configured the same way for the planner,
//! for ad-hoc queries and for operators that run DataFusion plans (OVER): one target partition,
//! no information schema, strings as `Utf8` (not `Utf8View`), no session time zone, and MIN/MAX
//! replaced by the float-safe versions of [`crate::df_fixes`]. [`block_on`] drives DataFusion's
//! async planning calls to completion on the calling thread.

use datafusion::execution::context::{SessionConfig, SessionContext};

/// A new DataFusion session with the engine's settings and function overrides.
pub(crate) fn session_context() -> SessionContext {
    let mut cfg = SessionConfig::new().with_target_partitions(1).with_information_schema(false);
    cfg.options_mut().sql_parser.map_string_types_to_utf8view = false;
    cfg.options_mut().execution.time_zone = None;
    let ctx = SessionContext::new_with_config(cfg);
    for f in crate::df_fixes::min_max_udafs() {
        ctx.register_udaf((*f).clone());
    }
    ctx
}

/// Runs `f` to completion on the current thread.
pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    futures::executor::block_on(f)
}

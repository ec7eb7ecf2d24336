//! User-defined functions: DataFusion `ScalarUDF`s and `AggregateUDF`s that continuous queries
//! and ad-hoc SQL of a database can call by name.
//!
//! A function is registered in the [`Config`](crate::Config) a database opens with (so that a
//! durable database that reopens finds the functions its streams use while it replays its
//! catalog) or on the open database ([`Database::register_scalar_function`](crate::Database::register_scalar_function)).
//! A stream holds the function it was planned with; registering another function of the same
//! name later changes what new statements get, not running streams.

use std::collections::BTreeMap;

use datafusion::execution::FunctionRegistry;
use datafusion::execution::context::SessionContext;
use datafusion::logical_expr::{AggregateUDF, ScalarUDF};

use crate::error::{Error, Result, clip};

/// The user-defined functions of a database.
#[derive(Debug, Clone, Default)]
pub struct Functions {
    scalars: BTreeMap<String, ScalarUDF>,
    aggregates: BTreeMap<String, AggregateUDF>,
}

/// Refuses a name SQL cannot call as written, one of a built-in function (DataFusion would let
/// the user's replace it for every query of the database), or one the database has as a
/// function of the other kind (`taken`: "a scalar", "an aggregate").
fn check_name(name: &str, kind: &str, taken: Option<&str>) -> Result<()> {
    if let Some(other) = taken {
        return Err(Error::already_exists(format!("'{}' is {other} function of this database", clip(name))));
    }
    let ok = !name.is_empty()
        && name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !ok {
        return Err(Error::invalid_argument(format!(
            "{kind} function name '{}' must be lowercase letters, digits and underscores, starting with a letter or underscore (SQL folds unquoted names to lowercase)",
            clip(name)
        )));
    }
    let ctx = crate::df_session::session_context();
    if ctx.udf(name).is_ok() || ctx.udaf(name).is_ok() || ctx.udwf(name).is_ok() {
        return Err(Error::already_exists(format!(
            "'{name}' is a built-in function; give the {kind} function another name"
        )));
    }
    Ok(())
}

impl Functions {
    /// Adds (or replaces) a scalar function, called by its `name()`.
    pub fn add_scalar(&mut self, f: ScalarUDF) -> Result<()> {
        check_name(f.name(), "scalar", self.aggregates.contains_key(f.name()).then_some("an aggregate"))?;
        self.scalars.insert(f.name().to_string(), f);
        Ok(())
    }

    /// Adds (or replaces) an aggregate function, called by its `name()`.
    pub fn add_aggregate(&mut self, f: AggregateUDF) -> Result<()> {
        check_name(f.name(), "aggregate", self.scalars.contains_key(f.name()).then_some("a scalar"))?;
        self.aggregates.insert(f.name().to_string(), f);
        Ok(())
    }

    /// (name, "scalar" or "aggregate", signature as DataFusion prints it), by name.
    pub fn list(&self) -> Vec<(String, &'static str, String)> {
        let mut out: Vec<(String, &'static str, String)> = self
            .scalars
            .values()
            .map(|f| (f.name().to_string(), "scalar", format!("{:?}", f.signature().type_signature)))
            .chain(
                self.aggregates
                    .values()
                    .map(|f| (f.name().to_string(), "aggregate", format!("{:?}", f.signature().type_signature))),
            )
            .collect();
        out.sort();
        out
    }

    /// Makes the functions callable in `ctx`.
    pub(crate) fn register(&self, ctx: &SessionContext) {
        for f in self.scalars.values() {
            ctx.register_udf(f.clone());
        }
        for f in self.aggregates.values() {
            ctx.register_udaf(f.clone());
        }
    }
}

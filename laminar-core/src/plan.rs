//! The continuous-query planner: from a parsed query to the operator tree that runs it.
//!
//! [`plan_continuous`] turns a `SELECT` into a [`PlannedQuery`]: a tree of [`Node`]s (see
//! `pipeline`): leaves read a source or stream, a join node combines two subtrees, a union node any
//! number of them, and each node carries a chain of operators. It works in three passes:
//!
//! 1. `rewrite`: the SQL AST is rewritten into something DataFusion can plan. `GROUP BY …,
//!    TUMBLE(ts, size)` and the table-valued `FROM TUMBLE(t, ts, size)` (and HOP, SESSION,
//!    CUMULATE) become a scan of a *windowed relation*: `t`'s columns plus
//!    `window_start`/`window_end`. `ASOF JOIN … MATCH_CONDITION(…)` and `JOIN … FOR SYSTEM_TIME AS
//!    OF l.ts` become LEFT JOINs with a marker call in their condition; `FOR SYSTEM_TIME AS OF
//!    PROCTIME()` becomes a plain join whose right side is remembered as a lookup table.
//! 2. DataFusion plans and type-checks the query ([`logical_plan`]: its analyzer, not its optimizer,
//!    so the plan keeps the shape of the SQL). Plans with a join or a subquery predicate also get
//!    the optimizer rules joins need (subquery decorrelation, filter push-down, equijoin keys).
//! 3. The logical plan is lowered bottom-up (`lower`, with `aggregate`, `join` and `over` for the
//!    larger cases): windowed scan → a leaf with `WindowAssign`; Filter/Projection → `Stateless`
//!    steps; Aggregate/DISTINCT → `Aggregate`, `SessionAggregate`, or `RetractAggregate` over a
//!    changelog; Join → a join node with a `HashJoin` or `AsofJoin`; Union → a `UnionAll` node over
//!    all its inputs; OVER → `OverWindow` (per event-time window, with a bounded top-N when a rank
//!    is filtered) or `StreamOver`. Expressions are compiled to DataFusion `PhysicalExpr`s here,
//!    once.
//!
//! This file holds the types shared with the engine ([`RelationInfo`], [`PlanOptions`],
//! [`PlannedQuery`]) and the two entry points.

mod aggregate;
mod join;
mod lower;
mod over;
mod rewrite;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNode;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Query};

use crate::df_session::block_on;
/// Re-exported for the callers that reach the session through the planner (db.rs).
pub(crate) use crate::df_session::session_context;
use crate::error::{Error, Result, nearest_name};
use crate::operator::StreamKind;
use crate::operator::window::{WindowKind, windowed_schema};
use crate::pipeline::Node;
use crate::sql::EmitMode;

use self::lower::{Lowerer, with_weight};
use self::rewrite::{Rewriter, asof_marker_udf};

/// What the planner knows of a relation a query can read.
#[derive(Clone)]
pub(crate) struct RelationInfo {
    /// Logical schema (without `__weight`).
    pub schema: SchemaRef,
    pub kind: StreamKind,
    /// A column every on-time row has at or past the watermark (a source's event-time column,
    /// a closed window's end), if known.
    pub time_col: Option<usize>,
}

/// A windowed relation the rewrite introduced: a scan of `pseudo` is `input` assigned to windows.
pub(crate) struct WindowBinding {
    pseudo: String,
    input: String,
    time_col: String,
    kind: WindowKind,
}

/// A planned continuous query.
pub(crate) struct PlannedQuery {
    /// Relations read, each once.
    pub inputs: Vec<String>,
    pub root: Node,
    pub time_col: Option<usize>,
    /// Output schema, with `__weight` last for changelogs.
    pub output_schema: SchemaRef,
    pub kind: StreamKind,
    /// A changelog's key columns (of a GROUP BY, followed through projections), when known.
    pub changelog_key: Option<Vec<String>>,
    /// Schema of late rows, when the query windows its input.
    pub late_schema: Option<SchemaRef>,
}

pub(crate) struct PlanOptions {
    pub emit: Option<EmitMode>,
    pub lateness_us: i64,
    pub state_ttl_us: Option<i64>,
    /// LATE DATA TO routes whole rows: window assignment keeps every column.
    pub keep_all_columns: bool,
    pub partitions: usize,
    /// The RocksDB state backend and the bytes an aggregate keeps in memory before spilling.
    pub state: Option<(std::sync::Arc<crate::state_store::StateStore>, usize)>,
    /// The database's user-defined functions.
    pub functions: crate::functions::Functions,
    /// Group mode: the column every keyed operator must be keyed by (`_key`, the message key:
    /// a key lives in one partition, so a partition's task holds all of a key's state).
    pub partition_key: Option<&'static str>,
}

/// Plans `query` into a DataFusion logical plan over the given relations (analyzed, not optimized).
pub(crate) fn logical_plan(
    query: Query,
    relations: &HashMap<String, RelationInfo>,
    extra: &[(String, SchemaRef)],
    functions: &crate::functions::Functions,
) -> Result<LogicalPlan> {
    let ctx = session_context();
    functions.register(&ctx);
    ctx.register_udf(asof_marker_udf());
    for (name, info) in relations {
        ctx.register_table(name.as_str(), Arc::new(MemTable::try_new(info.schema.clone(), vec![vec![]])?))?;
    }
    for (name, schema) in extra {
        ctx.register_table(name.as_str(), Arc::new(MemTable::try_new(schema.clone(), vec![vec![]])?))?;
    }
    let state = ctx.state();
    let stmt = DFStatement::Statement(Box::new(ast::Statement::Query(Box::new(query))));
    let plan = block_on(state.statement_to_plan(stmt)).map_err(|e| improve_not_found(e.into(), relations))?;
    let plan = state.analyzer().execute_and_check(plan, state.config_options(), |_, _| {})?;
    Ok(plan)
}

/// "no source, stream, table or view named …; did you mean …?"
fn unknown_relation(name: &str, relations: &HashMap<String, RelationInfo>) -> Error {
    let hint = nearest_name(name, relations.keys().map(String::as_str))
        .map(|n| format!("; did you mean '{n}'?"))
        .unwrap_or_default();
    Error::not_found(format!("no source, stream, table or view named '{name}'{hint}"))
}

/// Adds a "did you mean" to table-not-found errors.
fn improve_not_found(e: Error, relations: &HashMap<String, RelationInfo>) -> Error {
    let msg = e.message().to_string();
    if let Some(rest) = msg.split("table '").nth(1)
        && msg.contains("not found")
    {
        let name = rest.split('\'').next().unwrap_or("");
        let short = name.rsplit('.').next().unwrap_or(name);
        return unknown_relation(short, relations);
    }
    e
}

/// Group mode: every operator that keeps state per key is keyed by the column `key` (the
/// message key), named as it is: an aggregate groups by it, a join matches it on both sides, an
/// OVER window partitions by it. Each partition of the group runs in its own task, which holds
/// only its partition's rows; a query keyed otherwise would split a key's state between tasks.
fn check_keyed_by(plan: &LogicalPlan, key: &str) -> Result<()> {
    use datafusion::common::tree_node::TreeNodeRecursion;
    fn unalias(mut e: &Expr) -> &Expr {
        while let Expr::Alias(a) = e {
            e = &a.expr;
        }
        e
    }
    let is_key = |e: &Expr| matches!(unalias(e), Expr::Column(c) if c.name == key);
    let hint = format!(
        "in group mode (shared_dir) each partition is processed by the member that owns it, so state must be keyed by the message key: declare the source's '{key}' column and group, join or partition by it (produce the records keyed by the column you mean to group by)"
    );
    let mut err = None;
    plan.apply_with_subqueries(|node| {
        let bad = match node {
            LogicalPlan::Projection(p)
                if p.expr.iter().any(|e| matches!(e, Expr::Alias(a) if a.name == key && !is_key(&a.expr))) =>
            {
                Some("another expression is named")
            }
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(_))
                if !node.schema().fields().iter().any(|f| f.name() == key) =>
            {
                Some("its DISTINCT does not include")
            }
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::On(d)) if !d.on_expr.iter().any(is_key) => {
                Some("its DISTINCT ON does not include")
            }
            LogicalPlan::Aggregate(a) if !a.group_expr.iter().any(is_key) => Some("its GROUP BY does not include"),
            LogicalPlan::Join(j) if !j.on.iter().any(|(l, r)| is_key(l) && is_key(r)) => {
                Some("its join does not match")
            }
            LogicalPlan::Window(w)
                if !w.window_expr.iter().all(|e| match unalias(e) {
                    Expr::WindowFunction(f) => f.params.partition_by.iter().any(is_key),
                    _ => false,
                }) =>
            {
                Some("its OVER window does not partition by")
            }
            _ => None,
        };
        if let Some(what) = bad {
            err = Some(Error::plan(format!("this query is not keyed by the message key: {what} '{key}'; {hint}")));
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    err.map_or(Ok(()), Err)
}

/// Plans a continuous query over `relations`.
pub(crate) fn plan_continuous(
    mut query: Query,
    relations: &HashMap<String, RelationInfo>,
    opts: &PlanOptions,
) -> Result<PlannedQuery> {
    let mut rw = Rewriter { relations, bindings: vec![], lookups: vec![] };
    rw.query(&mut query)?;
    let extra: Vec<(String, SchemaRef)> = rw
        .bindings
        .iter()
        .map(|b| Ok((b.pseudo.clone(), windowed_schema(&relations[&b.input].schema)?)))
        .collect::<Result<_>>()?;
    let plan = logical_plan(query, relations, &extra, &opts.functions)?;
    let has_join = plan.exists(|p| {
        Ok(matches!(p, LogicalPlan::Join(_))
            || p.expressions()
                .iter()
                .any(|e| e.exists(|x| Ok(matches!(x, Expr::Exists(_) | Expr::InSubquery(_)))).unwrap_or(false)))
    })?;
    let plan = if has_join { join::optimize_joins(plan)? } else { plan };
    if let Some(key) = opts.partition_key {
        check_keyed_by(&plan, key)?;
    }
    let used = if opts.keep_all_columns {
        None
    } else {
        let mut used = std::collections::HashSet::new();
        plan.apply_with_subqueries(|node| {
            for e in node.expressions() {
                for c in e.column_refs() {
                    used.insert(c.name.clone());
                }
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })?;
        Some(used)
    };
    let lowerer =
        Lowerer { relations, used, bindings: &rw.bindings, lookups: &rw.lookups, opts, props: ExecutionProps::new() };
    let l = lowerer.lower(&plan)?;
    if opts.state_ttl_us.is_some() && !has_join {
        return Err(Error::plan("STATE TTL applies to joins; this query has none"));
    }
    if !l.aggregated && opts.emit.is_some() {
        return Err(Error::plan("EMIT applies to aggregations; this query has no GROUP BY or aggregate"));
    }
    if !l.aggregated && opts.lateness_us > 0 && l.late_schema.is_none() {
        return Err(Error::plan("ALLOW LATENESS applies to windowed queries"));
    }
    let output_schema = with_weight(plan.schema().as_arrow(), l.kind == StreamKind::Changelog);
    let mut inputs = vec![];
    for i in l.node.inputs() {
        if !inputs.contains(&i) {
            inputs.push(i);
        }
    }
    let changelog_key = if l.kind == StreamKind::Changelog { l.changelog_key } else { None };
    Ok(PlannedQuery {
        inputs,
        root: l.node,
        time_col: l.time,
        output_schema,
        kind: l.kind,
        changelog_key,
        late_schema: l.late_schema,
    })
}

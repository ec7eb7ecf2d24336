//! The core of the lowering from a DataFusion logical plan to a tree of pipeline [`Node`]s.
//!
//! [`Lowerer::lower`] walks the plan bottom-up and dispatches on the plan node: scans (plain, or of
//! a windowed relation, which adds `WindowAssign`), subquery aliases, filters and projections
//! (`Stateless` steps, following the window bounds, an upsert key and the event-time column through
//! them; a filter `rn <= n` on a ranking function also bounds the OVER operator below it to a
//! top-N) and `UNION ALL` are handled here; aggregates, joins and OVER (…) are lowered in the
//! sibling modules `aggregate`, `join` and `over`. [`Lowered`] is what each step returns.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};

use super::{PlanOptions, RelationInfo, WindowBinding};
use crate::error::{Error, Result};
use crate::operator::stateless::{Stateless, Step};
use crate::operator::window::{TimeScale, WindowAssign, WindowKind, windowed_schema};
use crate::operator::{Operator, StreamKind, WEIGHT_COLUMN};
use crate::pipeline::Node;

/// A lowered subtree: its root node and what the nodes above need to know of its output.
pub(super) struct Lowered {
    pub(super) node: Node,
    pub(super) kind: StreamKind,
    /// Indices of window_start/window_end in the output, with the window assigned below.
    pub(super) window: Option<(usize, usize, WindowKind)>,
    /// When only window_start of a fixed-size window (TUMBLE, HOP) is in the output: its index
    /// and the window size (µs), so that its end is known (`window_start + size`).
    pub(super) start_only: Option<(usize, i64)>,
    /// A changelog's key (the GROUP BY columns of the aggregate below, by output name), while
    /// every one of them is still in the output.
    pub(super) changelog_key: Option<Vec<String>>,
    pub(super) late_schema: Option<SchemaRef>,
    pub(super) aggregated: bool,
    /// See [`RelationInfo::time_col`].
    pub(super) time: Option<usize>,
}

/// Lowers one query; holds what the rewrite found and the options of the query.
pub(super) struct Lowerer<'a> {
    pub(super) relations: &'a HashMap<String, RelationInfo>,
    /// Every column name an expression of the query reads; None keeps every column.
    pub(super) used: Option<std::collections::HashSet<String>>,
    pub(super) bindings: &'a [WindowBinding],
    pub(super) lookups: &'a [String],
    pub(super) opts: &'a PlanOptions,
    pub(super) props: ExecutionProps,
}

/// `e` compiled against `schema`.
pub(super) fn phys(e: &Expr, schema: &DFSchema, props: &ExecutionProps) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(create_physical_expr(e, schema, props, &Default::default())?)
}

fn push_step(ops: &mut Vec<Box<dyn Operator>>, step: Step, weighted: bool) {
    ops.push(Box::new(Stateless { steps: vec![step], weighted }));
}

/// `schema`, with `__weight` appended when `weighted`.
pub(super) fn with_weight(schema: &Schema, weighted: bool) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if weighted {
        fields.push(Field::new(WEIGHT_COLUMN, DataType::Int64, false));
    }
    Arc::new(Schema::new(fields))
}

impl Lowerer<'_> {
    pub(super) fn lower(&self, plan: &LogicalPlan) -> Result<Lowered> {
        match plan {
            LogicalPlan::TableScan(scan) => {
                let name = scan.table_name.table().to_string();
                if scan.projection.is_some() || !scan.filters.is_empty() || scan.fetch.is_some() {
                    return Err(Error::internal("unexpected pushed-down scan in an unoptimized plan"));
                }
                if let Some(b) = self.bindings.iter().find(|b| b.pseudo == name) {
                    let info = &self.relations[&b.input];
                    let time_col = info.schema.index_of(&b.time_col)?;
                    let scale = TimeScale::for_type(info.schema.field(time_col).data_type()).expect("checked");
                    let out = windowed_schema(&info.schema)?;
                    let n = info.schema.fields().len();
                    // Columns no expression of the query reads (by name: an over-approximation)
                    // are not copied into windows; LATE DATA TO keeps whole rows.
                    let unused: Vec<usize> = match &self.used {
                        Some(used) => {
                            (0..n).filter(|&i| i != time_col && !used.contains(info.schema.field(i).name())).collect()
                        }
                        None => vec![],
                    };
                    let op_schema = if unused.is_empty() {
                        out.clone()
                    } else {
                        let fields: Vec<Field> = out
                            .fields()
                            .iter()
                            .enumerate()
                            .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() || unused.contains(&i)))
                            .collect();
                        Arc::new(Schema::new(fields))
                    };
                    let input_schema = Arc::new(Schema::new(op_schema.fields()[..n].to_vec()));
                    let op = WindowAssign {
                        kind: b.kind,
                        time_col,
                        scale,
                        lateness: self.opts.lateness_us,
                        output_schema: op_schema,
                        unused,
                        input_schema,
                        rows_per_piece: WindowAssign::rows_per_piece(b.kind),
                    };
                    let mut node = Node::leaf(b.input.clone());
                    node.ops.push(Box::new(op));
                    return Ok(Lowered {
                        node,
                        kind: StreamKind::AppendOnly,
                        window: Some((n, n + 1, b.kind)),
                        start_only: None,
                        changelog_key: None,
                        late_schema: Some(out),
                        aggregated: false,
                        time: info.time_col,
                    });
                }
                let info =
                    self.relations.get(&name).ok_or_else(|| Error::not_found(format!("no relation named '{name}'")))?;
                let time = if info.kind == StreamKind::AppendOnly { info.time_col } else { None };
                Ok(Lowered {
                    node: Node::leaf(name),
                    kind: info.kind.clone(),
                    window: None,
                    start_only: None,
                    changelog_key: None,
                    late_schema: None,
                    aggregated: false,
                    time,
                })
            }
            LogicalPlan::SubqueryAlias(a) => self.lower(&a.input),
            LogicalPlan::Filter(f) => {
                let mut l = self.lower(&f.input)?;
                // `WHERE rn <= n` over a single ranking function: a bounded top-N.
                if let Some(n) = rank_limit(&f.predicate, &f.input) {
                    for op in l.node.ops.iter_mut().rev() {
                        if op.limit_rank(n) {
                            break;
                        }
                    }
                }
                let pred = phys(&f.predicate, f.input.schema(), &self.props)?;
                if matches!(l.window, Some((_, _, WindowKind::Session { .. }))) && !l.aggregated {
                    let cols = f.predicate.column_refs();
                    if cols.iter().any(|c| c.name == "window_start" || c.name == "window_end") {
                        return Err(Error::plan(
                            "session window bounds are known only after aggregation; filter them in HAVING or an outer query",
                        ));
                    }
                }
                push_step(&mut l.node.ops, Step::Filter(pred), l.kind == StreamKind::Changelog);
                Ok(l)
            }
            LogicalPlan::Projection(p) => {
                let mut l = self.lower(&p.input)?;
                let weighted = l.kind == StreamKind::Changelog;
                let exprs =
                    p.expr.iter().map(|e| phys(e, p.input.schema(), &self.props)).collect::<Result<Vec<_>>>()?;
                let out = with_weight(p.schema.as_arrow(), weighted);
                // Follow window_start/window_end through plain column references.
                let start_only = l.start_only.take();
                if let (None, Some((ws, size))) = (l.window, start_only) {
                    let input_schema = p.input.schema();
                    l.start_only = p
                        .expr
                        .iter()
                        .position(|e| {
                            let e = match e {
                                Expr::Alias(a) => a.expr.as_ref(),
                                e => e,
                            };
                            matches!(e, Expr::Column(c) if input_schema.index_of_column(c).ok() == Some(ws))
                        })
                        .map(|a| (a, size));
                }
                if let Some((ws, we, k)) = l.window {
                    let input_schema = p.input.schema();
                    let find = |idx: usize| {
                        p.expr.iter().position(|e| {
                            let e = match e {
                                Expr::Alias(a) => a.expr.as_ref(),
                                e => e,
                            };
                            matches!(e, Expr::Column(c) if input_schema.index_of_column(c).ok() == Some(idx))
                        })
                    };
                    l.start_only = match (find(ws), find(we), k) {
                        (Some(a), None, WindowKind::Tumble { size, .. } | WindowKind::Hop { size, .. }) => {
                            Some((a, size))
                        }
                        _ => None,
                    };
                    l.window = match (find(ws), find(we)) {
                        (Some(a), Some(b)) => Some((a, b, k)),
                        _ if !l.aggregated => {
                            if matches!(k, WindowKind::Session { .. }) {
                                return Err(Error::plan("session window bounds are known only after aggregation"));
                            }
                            None
                        }
                        _ => None,
                    };
                }
                if let Some(key) = l.changelog_key.take() {
                    // A changelog's key follows its columns through the projection (renamed or
                    // not); a window is identified by either of its bounds. A key column left out
                    // leaves the changelog without a known key.
                    let input_schema = p.input.schema();
                    let mut new_key = vec![];
                    let mut kept = 0;
                    for k in &key {
                        let at = p.expr.iter().position(|e| {
                            let inner = match e {
                                Expr::Alias(a) => a.expr.as_ref(),
                                e => e,
                            };
                            matches!(inner, Expr::Column(c) if input_schema.index_of_column(c).is_ok_and(|idx| input_schema.field(idx).name() == k))
                        });
                        if let Some(i) = at {
                            new_key.push(p.schema.field(i).name().clone());
                            kept += 1;
                        } else if k == "window_start" || k == "window_end" {
                            kept += 1; // the other bound identifies the window
                        }
                    }
                    let window_kept = !key.iter().any(|k| k == "window_start" || k == "window_end")
                        || new_key.iter().any(|n| {
                            p.expr.iter().zip(p.schema.fields()).any(|(e, f)| {
                                f.name() == n
                                    && matches!(match e { Expr::Alias(a) => a.expr.as_ref(), e => e }, Expr::Column(c) if c.name == "window_start" || c.name == "window_end")
                            })
                        });
                    if kept == key.len() && window_kept {
                        l.changelog_key = Some(new_key);
                    }
                }
                if let StreamKind::Upsert { key } = &l.kind {
                    // The key follows its columns through the projection (renamed or not); a
                    // window is identified by either of its bounds.
                    let input_schema = p.input.schema();
                    let mut new_key = vec![];
                    for (i, e) in p.expr.iter().enumerate() {
                        let inner = match e {
                            Expr::Alias(a) => a.expr.as_ref(),
                            e => e,
                        };
                        if let Expr::Column(c) = inner
                            && let Ok(idx) = input_schema.index_of_column(c)
                            && key.contains(input_schema.field(idx).name())
                        {
                            new_key.push(p.schema.field(i).name().clone());
                        }
                    }
                    let has_window = |k: &Vec<String>| k.iter().any(|n| n == "window_start" || n == "window_end");
                    let lost: Vec<&String> = key
                        .iter()
                        .filter(|k| !(k.as_str() == "window_end" && has_window(&new_key)) && !(k.as_str() == "window_start" && has_window(&new_key)))
                        .filter(|k| !p.expr.iter().any(|e| matches!(match e { Expr::Alias(a) => a.expr.as_ref(), e => e }, Expr::Column(c) if &c.name == *k)))
                        .collect();
                    if !lost.is_empty() {
                        return Err(Error::plan(format!(
                            "the query must select {} to key its upserts (EMIT ON UPDATE / EVERY are keyed by the GROUP BY columns)",
                            lost.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", ")
                        )));
                    }
                    l.kind = StreamKind::Upsert { key: new_key };
                }
                // And the watermark-tracking column.
                if let Some(t) = l.time {
                    let input_schema = p.input.schema();
                    l.time = p.expr.iter().position(|e| {
                        let e = match e {
                            Expr::Alias(a) => a.expr.as_ref(),
                            e => e,
                        };
                        matches!(e, Expr::Column(c) if input_schema.index_of_column(c).ok() == Some(t))
                    });
                }
                push_step(&mut l.node.ops, Step::Project(exprs, out), weighted);
                Ok(l)
            }
            LogicalPlan::Aggregate(agg) => self.lower_aggregate(agg),
            LogicalPlan::Distinct(datafusion::logical_expr::Distinct::All(input)) => {
                // SELECT DISTINCT is a GROUP BY of every column with no aggregate.
                let cols: Vec<Expr> = input.schema().columns().into_iter().map(Expr::Column).collect();
                let agg = datafusion::logical_expr::Aggregate::try_new(input.clone(), cols, vec![])?;
                self.lower_aggregate(&agg)
            }
            LogicalPlan::Distinct(_) => {
                Err(Error::not_implemented("DISTINCT ON in a continuous query is not available yet"))
            }
            LogicalPlan::Sort(_) => Err(Error::plan(
                "ORDER BY has no meaning on an unbounded stream; sort when you query a materialized view",
            )),
            LogicalPlan::Limit(_) => Err(Error::plan("LIMIT is not supported in a continuous query")),
            LogicalPlan::Join(j) => self.lower_join(j),
            LogicalPlan::Window(w) => self.lower_over(w),
            LogicalPlan::Union(u) => self.lower_union(u),
            other => Err(Error::plan(format!("a continuous query cannot contain {}", other.display()))),
        }
    }

    /// `UNION ALL` of any number of inputs (`UNION` is DataFusion's DISTINCT over it, lowered as
    /// `SELECT DISTINCT`). Append-only when every input is; a changelog when any input is (the
    /// append-only ones then insert with weight +1). An upsert input is refused: its rows replace
    /// each other by key, which a union with other rows cannot keep.
    fn lower_union(&self, u: &datafusion::logical_expr::Union) -> Result<Lowered> {
        if u.inputs.len() < 2 {
            return Err(Error::internal("a union of fewer than two inputs"));
        }
        // `a UNION ALL b UNION ALL c` is planned as nested unions: one node takes all the inputs
        // when the inner union's types are already the outer's.
        fn flatten<'p>(u: &'p datafusion::logical_expr::Union, out: &mut Vec<&'p LogicalPlan>) {
            for p in &u.inputs {
                match p.as_ref() {
                    LogicalPlan::Union(inner)
                        if inner.schema.fields().len() == u.schema.fields().len()
                            && inner
                                .schema
                                .fields()
                                .iter()
                                .zip(u.schema.fields())
                                .all(|(a, b)| a.data_type() == b.data_type()) =>
                    {
                        flatten(inner, out)
                    }
                    other => out.push(other),
                }
            }
        }
        let mut inputs = vec![];
        flatten(u, &mut inputs);
        let mut ins = vec![];
        for (i, p) in inputs.into_iter().enumerate() {
            let l = self.lower(p)?;
            if let StreamKind::Upsert { .. } = l.kind {
                return Err(Error::not_implemented(format!(
                    "input {} of UNION ALL is an upsert stream (EMIT ON UPDATE / EVERY); a union of one is not available yet — emit it as CHANGES",
                    i + 1
                )));
            }
            if matches!(l.window, Some((_, _, WindowKind::Session { .. }))) && !l.aggregated {
                return Err(Error::plan(
                    "session window bounds are known only after aggregation; aggregate each SESSION input before UNION ALL",
                ));
            }
            let fields = p.schema().fields().len();
            if fields != u.schema.fields().len() {
                return Err(Error::plan(format!(
                    "input {} of UNION ALL has {fields} columns, the first has {}",
                    i + 1,
                    u.schema.fields().len()
                )));
            }
            ins.push(l);
        }
        let kind = if ins.iter().any(|l| l.kind == StreamKind::Changelog) {
            StreamKind::Changelog
        } else {
            StreamKind::AppendOnly
        };
        let weighted = kind == StreamKind::Changelog;
        // What holds for every input holds for the union: the watermark-tracking column, the
        // window columns (same positions and kind).
        let time = if weighted { None } else { ins[0].time.filter(|t| ins.iter().all(|l| l.time == Some(*t))) };
        let window = ins[0].window.filter(|w| ins.iter().all(|l| l.window == Some(*w)));
        // Late rows of every windowed input go to one place: only when they have one shape.
        let lates: Vec<&SchemaRef> = ins.iter().filter_map(|l| l.late_schema.as_ref()).collect();
        let late_schema = match lates.first() {
            Some(s) if lates.iter().all(|x| x == s) => Some((*s).clone()),
            Some(_) if self.opts.keep_all_columns => {
                return Err(Error::plan(
                    "LATE DATA TO needs the windowed inputs of UNION ALL to have the same columns: their late rows go to one stream",
                ));
            }
            _ => None,
        };
        let aggregated = ins.iter().any(|l| l.aggregated);
        let union = crate::operator::union::UnionAll::try_new(
            ins.iter().map(|l| l.kind.clone()).collect(),
            with_weight(u.schema.as_arrow(), weighted),
            weighted,
        )?;
        Ok(Lowered {
            node: Node {
                input: crate::pipeline::NodeInput::Union {
                    union: Box::new(union),
                    inputs: ins.into_iter().map(|l| l.node).collect(),
                },
                ops: vec![],
                stats: Default::default(),
            },
            kind,
            window,
            start_only: None,
            changelog_key: None,
            late_schema,
            aggregated,
            time,
        })
    }
}

/// `n` when `pred` is `c <= n`, `c < n + 1` or `c = 1` for a column `c` that is a ranking
/// window function's output (reached through aliases and projections).
fn rank_limit(pred: &Expr, input: &LogicalPlan) -> Option<u64> {
    use datafusion::logical_expr::{BinaryExpr, Operator as Op};
    fn strip(e: &Expr) -> &Expr {
        match e {
            Expr::Cast(c) => strip(&c.expr),
            Expr::TryCast(c) => strip(&c.expr),
            e => e,
        }
    }
    fn lit(e: &Expr) -> Option<i64> {
        match strip(e) {
            Expr::Literal(v, _) => v.to_string().parse().ok(),
            _ => None,
        }
    }
    fn origin(plan: &LogicalPlan, idx: usize) -> bool {
        match plan {
            LogicalPlan::SubqueryAlias(a) => origin(&a.input, idx),
            LogicalPlan::Projection(p) => match p.expr.get(idx).map(|e| e.clone().unalias()) {
                Some(Expr::Column(c)) => p.input.schema().index_of_column(&c).is_ok_and(|i| origin(&p.input, i)),
                _ => false,
            },
            LogicalPlan::Window(w) => idx >= w.input.schema().fields().len() && w.window_expr.len() == 1,
            _ => false,
        }
    }
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = pred else { return None };
    let (col, n, op) = match (strip(left), lit(right), lit(left), strip(right)) {
        (Expr::Column(c), Some(n), _, _) => (c, n, *op),
        (_, _, Some(n), Expr::Column(c)) => (c, n, op.swap()?),
        _ => return None,
    };
    let n = match op {
        Op::LtEq => n,
        Op::Lt => n - 1,
        Op::Eq if n == 1 => 1,
        _ => return None,
    };
    let idx = input.schema().index_of_column(col).ok()?;
    (n >= 1 && origin(input, idx)).then_some(n as u64)
}

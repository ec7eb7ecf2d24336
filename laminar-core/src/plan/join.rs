//! Lowering of joins, and the optimizer pass plans with joins get.
//!
//! [`optimize_joins`] pushes `WHERE` conditions into joins and extracts equijoin keys. A join then
//! becomes a join node over its two lowered inputs: an `AsofJoin` when the rewrite left an ASOF
//! marker in the condition (ASOF and temporal joins), otherwise a `HashJoin` (inner, outer, semi,
//! anti, or a lookup join). For each side the lowering finds how long its rows are needed: until
//! the watermark passes a bound the join condition puts on the other side's event time, until
//! STATE TTL, or until they are retracted.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::DFSchema;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::PhysicalExpr;

use super::lower::{Lowered, Lowerer, phys};
use super::rewrite::ASOF_MARKER;
use crate::error::{Error, Result};
use crate::operator::join::{HashJoin, JoinType, SideSpec};
use crate::operator::window::TimeScale;
use crate::operator::{Operator, StreamKind};
use crate::pipeline::Node;

/// Runs the two optimizer rules joins need: filters pushed into and below joins (so `WHERE`
/// conditions become join conditions and per-side filters), then equalities between the sides
/// extracted as hash keys. Only for plans with a join: other plans keep the shape of the SQL.
pub(super) fn optimize_joins(plan: LogicalPlan) -> Result<LogicalPlan> {
    use datafusion::optimizer::decorrelate_predicate_subquery::DecorrelatePredicateSubquery;
    use datafusion::optimizer::extract_equijoin_predicate::ExtractEquijoinPredicate;
    use datafusion::optimizer::push_down_filter::PushDownFilter;
    use datafusion::optimizer::{Optimizer, OptimizerContext};
    let opt = Optimizer::with_rules(vec![
        Arc::new(DecorrelatePredicateSubquery::new()),
        Arc::new(PushDownFilter::new()),
        Arc::new(ExtractEquijoinPredicate::new()),
    ]);
    Ok(opt.optimize(plan, &OptimizerContext::new(), |_, _| {})?)
}

/// `e` with one plain column reference of `schema` at index `idx`, possibly `± literal`:
/// returns the literal's adjustment to apply to the other side (`t - c <= x` ⇒ `t <= x + c`).
fn time_ref(e: &Expr, schema: &DFSchema, idx: usize) -> Option<Option<(datafusion::logical_expr::Operator, Expr)>> {
    use datafusion::logical_expr::{BinaryExpr, Operator as Op};
    match e {
        Expr::Column(c) if schema.index_of_column(c).ok() == Some(idx) => Some(None),
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if matches!(op, Op::Plus | Op::Minus) => {
            if !matches!(right.as_ref(), Expr::Literal(..)) {
                return None;
            }
            if time_ref(left, schema, idx)?.is_some() {
                return None; // one adjustment only
            }
            let inv = if *op == Op::Plus { Op::Minus } else { Op::Plus };
            Some(Some((inv, right.as_ref().clone())))
        }
        Expr::Cast(c) => time_ref(&c.expr, schema, idx),
        _ => None,
    }
}

/// `e` with `time_ref`'s adjustment applied.
fn shifted(e: Expr, adj: Option<(datafusion::logical_expr::Operator, Expr)>) -> Expr {
    match adj {
        None => e,
        Some((op, lit)) => Expr::BinaryExpr(datafusion::logical_expr::BinaryExpr::new(Box::new(e), op, Box::new(lit))),
    }
}

fn only_refs(e: &Expr, schema: &DFSchema) -> bool {
    let cols = e.column_refs();
    !cols.is_empty() && cols.iter().all(|c| schema.index_of_column(c).is_ok())
}

/// Upper bounds `other.t <= f(side)` found in the join condition, as expressions `f` over the
/// side's schema.
fn expiry_candidates(
    conjuncts: &[Expr],
    on: &[(Expr, Expr)],
    side: usize,
    schemas: [&DFSchema; 2],
    other_time: usize,
) -> Vec<Expr> {
    use datafusion::logical_expr::{Between, BinaryExpr, Operator as Op};
    let (mine, theirs) = (schemas[side], schemas[1 - side]);
    let mut out = vec![];
    for (a, b) in on {
        let (m, t) = if side == 0 { (a, b) } else { (b, a) };
        if let Some(adj) = time_ref(t, theirs, other_time)
            && only_refs(m, mine)
        {
            out.push(shifted(m.clone(), adj));
        }
    }
    let mut pairs: Vec<(Expr, Expr)> = vec![]; // (small, big): small <= big
    for c in conjuncts {
        match c {
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => match op {
                Op::Lt | Op::LtEq => pairs.push((left.as_ref().clone(), right.as_ref().clone())),
                Op::Gt | Op::GtEq => pairs.push((right.as_ref().clone(), left.as_ref().clone())),
                Op::Eq => {
                    pairs.push((left.as_ref().clone(), right.as_ref().clone()));
                    pairs.push((right.as_ref().clone(), left.as_ref().clone()));
                }
                _ => {}
            },
            Expr::Between(Between { expr, negated: false, low, high }) => {
                pairs.push((low.as_ref().clone(), expr.as_ref().clone()));
                pairs.push((expr.as_ref().clone(), high.as_ref().clone()));
            }
            _ => {}
        }
    }
    for (small, big) in pairs {
        if let Some(adj) = time_ref(&small, theirs, other_time)
            && only_refs(&big, mine)
        {
            out.push(shifted(big, adj));
        }
    }
    out
}

impl Lowerer<'_> {
    fn lower_asof(
        &self,
        j: &datafusion::logical_expr::Join,
        l: Lowered,
        r: Lowered,
        mut conjuncts: Vec<Expr>,
        pos: usize,
    ) -> Result<Lowered> {
        use crate::operator::asof::{AsofJoin, AsofOp, AsofSide};
        use datafusion::logical_expr::ExprSchemable;
        use datafusion::logical_expr::utils::conjunction;
        if j.join_type != datafusion::logical_expr::JoinType::Left {
            return Err(Error::internal("an ASOF join is planned as a LEFT join"));
        }
        let Expr::ScalarFunction(marker) = conjuncts.remove(pos) else { unreachable!("found above") };
        let (a, b) = (&marker.args[0], &marker.args[1]);
        let code = match &marker.args[2] {
            Expr::Literal(v, _) => v.to_string().parse::<i64>().map_err(|_| Error::internal("ASOF marker code"))?,
            _ => return Err(Error::internal("ASOF marker code")),
        };
        let temporal = code >= 6;
        let what = if temporal { "temporal join" } else { "ASOF join" };
        if l.kind != StreamKind::AppendOnly {
            return Err(Error::not_implemented(format!(
                "the left input of the {what} is a {} stream; it reads an append-only stream",
                l.kind
            )));
        }
        if r.kind != StreamKind::AppendOnly && !(temporal && r.kind == StreamKind::Changelog) {
            return Err(Error::not_implemented(format!("the right input of the {what} is a {} stream", r.kind)));
        }
        if j.on.is_empty() {
            return Err(Error::not_implemented(format!("a {what} needs at least one key equality in ON (…)")));
        }
        let schemas = [j.left.schema().as_ref(), j.right.schema().as_ref()];
        let (lt, rt, flipped) = if only_refs(a, schemas[0]) && only_refs(b, schemas[1]) {
            (a, b, false)
        } else if only_refs(a, schemas[1]) && only_refs(b, schemas[0]) {
            (b, a, true)
        } else {
            return Err(Error::plan(
                "MATCH_CONDITION compares a time of the left input with a time of the right input",
            ));
        };
        let op = match (code, flipped) {
            (0, false) | (2, true) => AsofOp::Ge,
            (1, false) | (3, true) => AsofOp::Gt,
            (2, false) | (0, true) => AsofOp::Le,
            (3, false) | (1, true) => AsofOp::Lt,
            (4, _) => AsofOp::Nearest,
            // Temporal: the latest version at or before the left row's time.
            (_, false) => AsofOp::Ge,
            (_, true) => AsofOp::Le,
        };
        let mut sides = vec![];
        for (s, t) in [(0, lt), (1, rt)] {
            let ty = t.get_type(schemas[s])?;
            let scale = TimeScale::for_type(&ty).ok_or_else(|| {
                Error::plan(format!(
                    "MATCH_CONDITION compares times: '{t}' is {ty}, not TIMESTAMP or BIGINT milliseconds"
                ))
            })?;
            let keys =
                j.on.iter()
                    .map(|(x, y)| phys(if s == 0 { x } else { y }, schemas[s], &self.props))
                    .collect::<Result<Vec<_>>>()?;
            sides.push(AsofSide {
                keys,
                time: phys(t, schemas[s], &self.props)?,
                scale,
                schema: Arc::new(schemas[s].as_arrow().clone()),
            });
        }
        let key_types =
            j.on.iter().map(|(x, _)| x.get_type(schemas[0])).collect::<datafusion::error::Result<Vec<_>>>()?;
        let filter = match conjunction(conjuncts) {
            Some(f) => Some(phys(&f, &j.schema, &self.props)?),
            None => None,
        };
        let right = sides.pop().expect("two");
        let left = sides.pop().expect("two");
        let mut join = AsofJoin::try_new(op, left, right, key_types, filter, Arc::new(j.schema.as_arrow().clone()))?;
        if temporal {
            join.temporal(code == 6, r.kind == StreamKind::Changelog);
        }
        Ok(Lowered {
            node: Node {
                input: crate::pipeline::NodeInput::Join {
                    join: Box::new(join) as Box<dyn Operator>,
                    left: Box::new(l.node),
                    right: Box::new(r.node),
                },
                ops: vec![],
                stats: Default::default(),
            },
            kind: StreamKind::AppendOnly,
            window: None,
            start_only: None,
            changelog_key: None,
            late_schema: None,
            aggregated: l.aggregated || r.aggregated,
            time: None,
        })
    }

    pub(super) fn lower_join(&self, j: &datafusion::logical_expr::Join) -> Result<Lowered> {
        use datafusion::logical_expr::utils::split_conjunction;
        use datafusion::logical_expr::{ExprSchemable, JoinType as DJ};
        let join_type = match j.join_type {
            DJ::Inner => JoinType::Inner,
            DJ::Left => JoinType::Left,
            DJ::Right => JoinType::Right,
            DJ::Full => JoinType::Full,
            DJ::LeftSemi => JoinType::Semi,
            DJ::LeftAnti if j.null_aware => {
                return Err(Error::not_implemented(
                    "NOT IN (subquery) in a continuous query is not available yet; write NOT EXISTS",
                ));
            }
            DJ::LeftAnti => JoinType::Anti,
            other => {
                return Err(Error::not_implemented(format!(
                    "{other} joins in continuous queries are not available yet"
                )));
            }
        };
        let l = self.lower(&j.left)?;
        let r = self.lower(&j.right)?;
        let conjuncts: Vec<Expr> =
            j.filter.as_ref().map(|f| split_conjunction(f).into_iter().cloned().collect()).unwrap_or_default();
        if let Some(pos) =
            conjuncts.iter().position(|c| matches!(c, Expr::ScalarFunction(f) if f.func.name() == ASOF_MARKER))
        {
            return self.lower_asof(j, l, r, conjuncts, pos);
        }
        for (side, x) in [("left", &l), ("right", &r)] {
            if let StreamKind::Upsert { .. } = x.kind {
                return Err(Error::not_implemented(format!(
                    "the {side} input of the join is an upsert stream (EMIT ON UPDATE / EVERY); joining one is not available yet — emit it as CHANGES"
                )));
            }
        }
        if j.on.is_empty() {
            return Err(Error::not_implemented(
                "a join in a continuous query needs at least one equality between its two sides (cross joins and pure range joins are not available yet)",
            ));
        }
        let schemas = [j.left.schema().as_ref(), j.right.schema().as_ref()];
        let lookup = schemas[1]
            .iter()
            .next()
            .and_then(|(q, _)| q.map(|q| q.table().to_string()))
            .is_some_and(|q| self.lookups.contains(&q));
        if lookup && !matches!(join_type, JoinType::Inner | JoinType::Left) {
            return Err(Error::plan("a lookup join (FOR SYSTEM_TIME AS OF PROCTIME()) is a JOIN or a LEFT JOIN"));
        }
        if lookup && l.kind != StreamKind::AppendOnly {
            return Err(Error::not_implemented(format!(
                "the left input of a lookup join is a {} stream; it reads an append-only stream",
                l.kind
            )));
        }
        let mut key_types = vec![];
        let mut keys: [Vec<Arc<dyn PhysicalExpr>>; 2] = [vec![], vec![]];
        for (a, b) in &j.on {
            key_types.push(a.get_type(schemas[0])?);
            keys[0].push(phys(a, schemas[0], &self.props)?);
            keys[1].push(phys(b, schemas[1], &self.props)?);
        }
        let times =
            [l.time.filter(|_| l.kind == StreamKind::AppendOnly), r.time.filter(|_| r.kind == StreamKind::AppendOnly)];
        let mut specs = vec![];
        for (side, x) in [&l, &r].into_iter().enumerate() {
            let weighted = x.kind == StreamKind::Changelog;
            let mut expiry = None;
            let mut bound_text = "kept until retracted".to_string();
            if lookup {
                bound_text = if side == 0 {
                    "not kept (each row looks up the table once)".into()
                } else {
                    "the table's current rows".into()
                };
            } else if let (Some(ot), false) = (times[1 - side], weighted) {
                for cand in expiry_candidates(&conjuncts, &j.on, side, schemas, ot) {
                    let Ok(t) = cand.get_type(schemas[side]) else { continue };
                    let Some(scale) = TimeScale::for_type(&t) else { continue };
                    let Ok(pe) = phys(&cand, schemas[side], &self.props) else { continue };
                    bound_text = format!("dropped once the watermark passes {cand}");
                    expiry = Some((pe, scale));
                    break;
                }
            }
            // STATE TTL: a side the condition does not bound forgets rows that old.
            let mut ttl = None;
            if let (None, Some(ttl_us), Some(t), false) = (&expiry, self.opts.state_ttl_us, times[side], lookup) {
                let (q, fld) = schemas[side].qualified_field(t);
                let scale = TimeScale::for_type(fld.data_type()).ok_or_else(|| Error::internal("time column type"))?;
                let col = phys(
                    &Expr::Column(datafusion::common::Column::new(q.cloned(), fld.name())),
                    schemas[side],
                    &self.props,
                )?;
                ttl = Some((col, scale, ttl_us));
                bound_text = format!(
                    "forgotten once the watermark is {} past {} (STATE TTL)",
                    crate::util::fmt_duration_us(ttl_us),
                    fld.name()
                );
            }
            specs.push(SideSpec {
                schema: Arc::new(schemas[side].as_arrow().clone()),
                weighted,
                keys: std::mem::take(&mut keys[side]),
                expiry,
                late_col: None,
                bound_text,
                ttl,
            });
        }
        // A side whose partner's eviction relies on its time column drops its late rows.
        for side in 0..2 {
            if specs[1 - side].expiry.is_some() {
                let t = times[side].expect("bounds come from the time column");
                let scale = TimeScale::for_type(schemas[side].field(t).data_type())
                    .ok_or_else(|| Error::internal("time column type"))?;
                specs[side].late_col = Some((t, scale));
            }
        }
        let right = specs.pop().expect("two");
        let left = specs.pop().expect("two");
        let joined_schema: SchemaRef = Arc::new(j.schema.as_arrow().clone());
        // The residual condition sees both sides (SEMI/ANTI output only the left's columns).
        let both = if matches!(join_type, JoinType::Semi | JoinType::Anti) {
            Arc::new(schemas[0].join(schemas[1])?)
        } else {
            j.schema.clone()
        };
        let filter = match &j.filter {
            Some(f) => Some(phys(f, &both, &self.props)?),
            None => None,
        };
        let cand_schema: SchemaRef = Arc::new(both.as_arrow().clone());
        let join = HashJoin::try_new(join_type, left, right, key_types, filter, joined_schema, cand_schema, lookup)?;
        let retracts = join.retracts();
        Ok(Lowered {
            node: Node {
                input: crate::pipeline::NodeInput::Join {
                    join: Box::new(join) as Box<dyn Operator>,
                    left: Box::new(l.node),
                    right: Box::new(r.node),
                },
                ops: vec![],
                stats: Default::default(),
            },
            kind: if retracts { StreamKind::Changelog } else { StreamKind::AppendOnly },
            window: None,
            start_only: None,
            changelog_key: None,
            late_schema: None,
            aggregated: l.aggregated || r.aggregated,
            time: None,
        })
    }
}

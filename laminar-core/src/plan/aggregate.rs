//! Lowering of GROUP BY and SELECT DISTINCT.
//!
//! Over an append-only input (windowed or not) the aggregate becomes an `Aggregate` (spilling to
//! the RocksDB state store when one is configured) or, for SESSION windows, a `SessionAggregate`;
//! the EMIT mode decides whether the output is append-only, a changelog or an upsert stream. Over a
//! changelog input it becomes a `RetractAggregate` (COUNT, SUM, AVG, MIN, MAX with retractions).

use datafusion::logical_expr::Expr;

use super::lower::{Lowered, Lowerer, phys, with_weight};
use crate::error::{Error, Result};
use crate::operator::aggregate::{AggSpec, Aggregate, GroupCol, check_emit};
use crate::operator::session::SessionAggregate;
use crate::operator::window::WindowKind;
use crate::operator::{Operator, StreamKind};
use crate::sql::EmitMode;

impl Lowerer<'_> {
    /// GROUP BY over a changelog: COUNT, SUM, AVG, MIN and MAX that take retractions.
    fn lower_retract_aggregate(&self, agg: &datafusion::logical_expr::Aggregate, mut l: Lowered) -> Result<Lowered> {
        use datafusion::logical_expr::ExprSchemable;
        use datafusion::logical_expr::expr::AggregateFunction;
        let emit = self.opts.emit.unwrap_or(EmitMode::Changes);
        if emit != EmitMode::Changes {
            return Err(Error::not_implemented(format!(
                "EMIT {emit} over a changelog input is not available yet; an aggregate over a retracting input emits CHANGES"
            )));
        }
        let in_schema = agg.input.schema();
        let mut keys = vec![];
        let mut key_types = vec![];
        for (i, g) in agg.group_expr.iter().enumerate() {
            key_types.push(agg.schema.field(i).data_type().clone());
            keys.push(phys(g, in_schema, &self.props)?);
        }
        let mut aggs = vec![];
        for (j, e) in agg.aggr_expr.iter().enumerate() {
            let out_type = agg.schema.field(agg.group_expr.len() + j).data_type().clone();
            let Expr::AggregateFunction(AggregateFunction { func, params }) = e.clone().unalias() else {
                return Err(Error::plan(format!("unexpected aggregate expression {e}")));
            };
            let name = func.name().to_lowercase();
            let fun = match name.as_str() {
                "count" => crate::operator::retract::RFun::Count,
                "sum" => crate::operator::retract::RFun::Sum,
                "avg" | "mean" => crate::operator::retract::RFun::Avg,
                "min" => crate::operator::retract::RFun::Min,
                "max" => crate::operator::retract::RFun::Max,
                _ => {
                    return Err(Error::not_implemented(format!(
                        "{} over a changelog input is not available yet (COUNT, SUM, AVG, MIN and MAX are)",
                        name.to_uppercase()
                    )));
                }
            };
            if params.distinct || !params.order_by.is_empty() || params.args.len() != 1 {
                return Err(Error::not_implemented(format!(
                    "{e} over a changelog input is not available yet (DISTINCT and ordered aggregates are not)"
                )));
            }
            let arg_type = params.args[0].get_type(in_schema)?;
            if matches!(fun, crate::operator::retract::RFun::Sum | crate::operator::retract::RFun::Avg)
                && !(arg_type.is_integer() || arg_type.is_floating())
            {
                return Err(Error::not_implemented(format!(
                    "{e} of {arg_type} over a changelog input is not available yet (integers and floats are)"
                )));
            }
            let filter = match &params.filter {
                Some(f) => Some(phys(f, in_schema, &self.props)?),
                None => None,
            };
            aggs.push(crate::operator::retract::RAgg {
                fun,
                arg: phys(&params.args[0], in_schema, &self.props)?,
                filter,
                arg_type,
                out_type,
            });
        }
        let output_schema = with_weight(agg.schema.as_arrow(), true);
        l.node.ops.push(Box::new(crate::operator::retract::RetractAggregate::try_new(
            keys,
            key_types,
            aggs,
            output_schema,
        )?));
        l.kind = StreamKind::Changelog;
        l.changelog_key = Some((0..agg.group_expr.len()).map(|i| agg.schema.field(i).name().clone()).collect());
        l.aggregated = true;
        l.window = None;
        l.start_only = None;
        l.time = None;
        Ok(l)
    }

    pub(super) fn lower_aggregate(&self, agg: &datafusion::logical_expr::Aggregate) -> Result<Lowered> {
        let mut l = self.lower(&agg.input)?;
        if l.kind == StreamKind::Changelog && l.window.is_none() {
            return self.lower_retract_aggregate(agg, l);
        }
        if l.kind != StreamKind::AppendOnly {
            return Err(Error::not_implemented(format!(
                "aggregating a {} input is not available yet; aggregate an append-only source or stream, or a changelog (EMIT CHANGES)",
                l.kind
            )));
        }
        // An aggregate over an append-only aggregate (windows emitted once, at close) works as
        // over any append-only input: the rows of a window arrive before the watermark that
        // closes the outer window.
        let in_schema = agg.input.schema();
        let mut layout = vec![];
        let mut key_exprs = vec![];
        let mut key_types = vec![];
        let mut group_names = vec![];
        for (i, g) in agg.group_expr.iter().enumerate() {
            group_names.push(agg.schema.field(i).name().clone());
            if let (Expr::Column(c), Some((ws, we, _))) = (g, l.window) {
                let idx = in_schema.index_of_column(c)?;
                if idx == ws {
                    layout.push(GroupCol::WindowStart);
                    continue;
                }
                if idx == we {
                    layout.push(GroupCol::WindowEnd);
                    continue;
                }
            }
            layout.push(GroupCol::Key(key_exprs.len()));
            key_types.push(agg.schema.field(i).data_type().clone());
            key_exprs.push(phys(g, in_schema, &self.props)?);
        }
        let windowed = layout.iter().any(|g| !matches!(g, GroupCol::Key(_)));
        if l.window.is_some() && !windowed {
            return Err(Error::plan("a windowed input must be grouped by window_start or window_end"));
        }
        let emit = self.opts.emit.unwrap_or(if windowed { EmitMode::OnWindowClose } else { EmitMode::Changes });
        check_emit(emit, windowed)?;
        let session = matches!(l.window, Some((_, _, WindowKind::Session { .. })));
        if session && matches!(emit, EmitMode::OnUpdate | EmitMode::Every(_)) {
            return Err(Error::plan(format!(
                "EMIT {emit} cannot be used with SESSION windows: sessions merge, which an upsert cannot express; use EMIT CHANGES"
            )));
        }
        let lateness = self.opts.lateness_us;
        let group_key = group_names.clone();
        let kind = match emit {
            EmitMode::OnWindowClose if lateness == 0 => StreamKind::AppendOnly,
            EmitMode::OnWindowClose | EmitMode::Changes => StreamKind::Changelog,
            EmitMode::Final => StreamKind::AppendOnly,
            EmitMode::OnUpdate | EmitMode::Every(_) => StreamKind::Upsert { key: group_names },
        };
        let physical_input = in_schema.as_arrow();
        let mut aggs = vec![];
        for e in &agg.aggr_expr {
            #[allow(deprecated)]
            let (expr, filter, order) = datafusion::physical_planner::create_aggregate_expr_and_maybe_filter(
                e,
                in_schema,
                physical_input,
                &self.props,
            )?;
            let mut args = expr.expressions();
            args.extend(order.iter().map(|o| o.expr.clone()));
            aggs.push(AggSpec { expr, args, filter });
        }
        let output_schema = with_weight(agg.schema.as_arrow(), kind == StreamKind::Changelog);
        let op: Box<dyn Operator> = if session {
            let (ws, _, WindowKind::Session { gap }) = l.window.expect("session") else { unreachable!() };
            Box::new(SessionAggregate::try_new(
                key_exprs,
                key_types,
                layout.clone(),
                aggs,
                ws,
                gap,
                emit,
                lateness,
                output_schema,
            )?)
        } else {
            let agg = Aggregate::try_new(
                key_exprs,
                key_types,
                layout.clone(),
                aggs,
                l.window.map(|(s, e, _)| (s, e)),
                emit,
                lateness,
                output_schema,
                self.opts.partitions,
            )?;
            Box::new(match &self.opts.state {
                Some((store, budget)) => agg.with_state_store(store.clone(), *budget)?,
                None => agg,
            })
        };
        l.node.ops.push(op);
        l.aggregated = true;
        let ws = layout.iter().position(|g| *g == GroupCol::WindowStart);
        let we = layout.iter().position(|g| *g == GroupCol::WindowEnd);
        // A window is emitted once the watermark passes its end: append-only output rows have
        // their window_end past the watermark they were emitted before.
        l.time = if kind == StreamKind::AppendOnly { we } else { None };
        l.changelog_key = (kind == StreamKind::Changelog).then(|| group_key.clone());
        l.kind = kind;
        l.start_only = match (ws, we, l.window) {
            (Some(a), None, Some((_, _, WindowKind::Tumble { size, .. } | WindowKind::Hop { size, .. }))) => {
                Some((a, size))
            }
            _ => None,
        };
        l.window = match (ws, we, l.window) {
            (Some(a), Some(b), Some((_, _, k))) => Some((a, b, k)),
            _ => None,
        };
        Ok(l)
    }
}

//! Lowering of window functions (`OVER (…)`).
//!
//! When every function partitions by the window (`window_end`, or `window_start` of a fixed-size
//! window) the query runs per event-time window (`OverWindow`); a single ROW_NUMBER/RANK/DENSE_RANK
//! there can keep a bounded top-N, which the lowering of a filter `rn <= n` above it asks for
//! (`rank_limit` in `lower`). Otherwise it runs over the stream (`StreamOver`), which allows only
//! functions that need a bounded number of earlier or later rows of a partition.

use std::sync::Arc;

use datafusion::common::tree_node::TreeNode;
use datafusion::logical_expr::Expr;

use super::lower::{Lowered, Lowerer, phys};
use crate::error::{Error, Result};
use crate::operator::StreamKind;
use crate::operator::window::{TimeScale, WindowKind};

/// The window expressions of `w` with unqualified column references: OVER operators evaluate them
/// with DataFusion over a table of the input's columns, which has no qualifiers.
fn unqualified_window_exprs(w: &datafusion::logical_expr::Window) -> Result<Vec<Expr>> {
    use datafusion::common::tree_node::Transformed;
    let names: Vec<&String> = w.input.schema().fields().iter().map(|f| f.name()).collect();
    if (1..names.len()).any(|i| names[..i].contains(&names[i])) {
        return Err(Error::not_implemented(
            "OVER (…) over an input with two columns of the same name is not available yet; rename one",
        ));
    }
    Ok(w.window_expr
        .iter()
        .map(|e| {
            e.clone()
                .transform(|x| {
                    Ok(match x {
                        Expr::Column(c) => {
                            Transformed::yes(Expr::Column(datafusion::common::Column::new_unqualified(c.name)))
                        }
                        other => Transformed::no(other),
                    })
                })
                .map(|t| t.data)
        })
        .collect::<datafusion::error::Result<Vec<_>>>()?)
}

impl Lowerer<'_> {
    /// OVER (PARTITION BY k ORDER BY ts …) over an unbounded stream, with frames that reach back a
    /// bounded number of rows.
    fn lower_stream_over(&self, w: &datafusion::logical_expr::Window, mut l: Lowered) -> Result<Lowered> {
        use datafusion::logical_expr::{ExprSchemable, WindowFrameBound, WindowFrameUnits};
        let in_schema = w.input.schema();
        let help = "OVER (…) over an unbounded stream takes PARTITION BY … ORDER BY <event time> with ROW_NUMBER(), RANK(), LAG(x[, n]), LEAD(x[, n]) or an aggregate over ROWS BETWEEN n PRECEDING AND CURRENT ROW";
        let Some(t) = l.time else {
            return Err(Error::not_implemented(format!(
                "{help}; this input has no event-time column the watermark follows"
            )));
        };
        let scale =
            TimeScale::for_type(in_schema.field(t).data_type()).ok_or_else(|| Error::internal("time column type"))?;
        let mut history = 0usize;
        let mut lead = 0usize;
        let mut row_number_cols = vec![];
        let mut shape: Option<Vec<Expr>> = None;
        let nin = in_schema.fields().len();
        for (j, e) in w.window_expr.iter().enumerate() {
            let Expr::WindowFunction(f) = e.clone().unalias() else {
                return Err(Error::plan(format!("unexpected window expression {e}")));
            };
            let p = &f.params;
            match &shape {
                None => shape = Some(p.partition_by.clone()),
                Some(pb) if *pb == p.partition_by => {}
                Some(_) => {
                    return Err(Error::not_implemented(format!(
                        "{e}: the OVER (…) functions of one query over a stream must share PARTITION BY"
                    )));
                }
            }
            let first_is_time = p.order_by.first().is_some_and(|o| {
                o.asc && matches!(&o.expr, Expr::Column(c) if in_schema.index_of_column(c).ok() == Some(t))
            });
            if !first_is_time {
                return Err(Error::not_implemented(format!("{e}: {help} (ascending, first)")));
            }
            let name = f.fun.name().to_lowercase();
            match name.as_str() {
                // Ranks continue from the partition's count: rows with equal times become ready
                // together, so ties never span two emissions.
                "row_number" | "rank" => row_number_cols.push(nin + j),
                "lead" | "lag" => {
                    let n = match p.args.get(1) {
                        None => 1,
                        Some(Expr::Literal(v, _)) => v
                            .to_string()
                            .parse::<usize>()
                            .map_err(|_| Error::plan(format!("{e}: the offset is a non-negative integer")))?,
                        Some(_) => return Err(Error::plan(format!("{e}: the offset is a constant"))),
                    };
                    if name == "lead" {
                        lead = lead.max(n);
                    } else {
                        history = history.max(n);
                    }
                }
                _ if matches!(f.fun, datafusion::logical_expr::WindowFunctionDefinition::AggregateUDF(_)) => {
                    let fr = &p.window_frame;
                    let n = match (&fr.units, &fr.start_bound, &fr.end_bound) {
                        (WindowFrameUnits::Rows, WindowFrameBound::Preceding(v), WindowFrameBound::CurrentRow)
                            if !v.is_null() =>
                        {
                            v.to_string()
                                .parse::<usize>()
                                .map_err(|_| Error::plan(format!("{e}: the frame's start is a row count")))?
                        }
                        _ => {
                            return Err(Error::not_implemented(format!(
                                "{e}: {help}; other frames would need every earlier row"
                            )));
                        }
                    };
                    history = history.max(n);
                }
                _ => {
                    return Err(Error::not_implemented(format!(
                        "{e}: {help}; {} over an unbounded partition is not available yet",
                        name.to_uppercase()
                    )));
                }
            }
        }
        let has_rank = w.window_expr.iter().any(
            |e| matches!(e.clone().unalias(), Expr::WindowFunction(f) if f.fun.name().eq_ignore_ascii_case("rank")),
        );
        if lead > 0 && has_rank {
            return Err(Error::not_implemented(
                "RANK() and LEAD() over an unbounded stream in one query are not available yet (a tie could straddle the rows LEAD holds back); use two streams",
            ));
        }
        let partition_by = shape.expect("at least one window function");
        let partition = partition_by.iter().map(|e| phys(e, in_schema, &self.props)).collect::<Result<Vec<_>>>()?;
        let partition_types =
            partition_by.iter().map(|e| e.get_type(in_schema)).collect::<datafusion::error::Result<Vec<_>>>()?;
        let exprs = unqualified_window_exprs(w)?;
        let op = crate::operator::over::StreamOver::try_new(
            exprs,
            Arc::new(in_schema.as_arrow().clone()),
            Arc::new(w.schema.as_arrow().clone()),
            t,
            scale,
            partition,
            partition_types,
            history,
            row_number_cols,
            lead,
        )?;
        l.node.ops.push(Box::new(op));
        l.window = None;
        l.start_only = None;
        Ok(l)
    }

    /// OVER (…) per event-time window: every function partitions by window_start or window_end.
    pub(super) fn lower_over(&self, w: &datafusion::logical_expr::Window) -> Result<Lowered> {
        let mut l = self.lower(&w.input)?;
        if l.kind != StreamKind::AppendOnly {
            return Err(Error::not_implemented(format!("OVER (…) over a {} input is not available yet", l.kind)));
        }
        let in_schema = w.input.schema();
        // Per window when every function partitions by the window: window_end identifies one,
        // window_start does when the size is fixed. Otherwise OVER runs over the stream.
        let partitions_by = |col: usize| {
            w.window_expr.iter().all(|e| match e.clone().unalias() {
                Expr::WindowFunction(f) => f
                    .params
                    .partition_by
                    .iter()
                    .any(|p| matches!(p, Expr::Column(c) if in_schema.index_of_column(c).is_ok_and(|i| i == col))),
                _ => false,
            })
        };
        let per_window = match l.window {
            None => false,
            Some((ws, we, kind)) => w.window_expr.iter().all(|e| match e.clone().unalias() {
                Expr::WindowFunction(f) => {
                    let start_ok = matches!(kind, WindowKind::Tumble { .. } | WindowKind::Hop { .. });
                    f.params.partition_by.iter().any(|p| matches!(p, Expr::Column(c) if in_schema.index_of_column(c).is_ok_and(|i| i == we || (i == ws && start_ok))))
                }
                _ => false,
            }),
        };
        // Only window_start of a fixed-size window is in the input: its end is start + size.
        let start_only = match (per_window, l.window, l.start_only) {
            (false, None, Some((ws, size))) if partitions_by(ws) => Some((ws, size)),
            _ => None,
        };
        if !per_window && start_only.is_none() {
            return self.lower_stream_over(w, l);
        }
        let (we, end_offset, kind) = match (l.window, start_only) {
            (Some((_, we, kind)), _) if per_window => (we, 0, Some(kind)),
            (_, Some((ws, size))) => (ws, size, None),
            _ => unreachable!("per window, or by window_start with a known size"),
        };
        if matches!(kind, Some(WindowKind::Session { .. })) && !l.aggregated {
            return Err(Error::plan(
                "session window bounds are known only after aggregation; rank sessions over a SESSION aggregate",
            ));
        }
        let exprs = unqualified_window_exprs(w)?;
        let mut op = crate::operator::over::OverWindow::new(
            exprs,
            Arc::new(in_schema.as_arrow().clone()),
            Arc::new(w.schema.as_arrow().clone()),
            we,
        )
        .with_end_offset(end_offset);
        if let [Expr::WindowFunction(f)] =
            w.window_expr.iter().map(|e| e.clone().unalias()).collect::<Vec<_>>().as_slice()
        {
            use crate::operator::over::{RankKind, RankSpec};
            use datafusion::logical_expr::ExprSchemable;
            let kind = match f.fun.name().to_lowercase().as_str() {
                "row_number" => Some(RankKind::RowNumber),
                "rank" => Some(RankKind::Rank),
                "dense_rank" => Some(RankKind::DenseRank),
                _ => None,
            };
            if let (Some(kind), None) = (kind, &f.params.filter) {
                let partition = f
                    .params
                    .partition_by
                    .iter()
                    .map(|e| phys(e, in_schema, &self.props))
                    .collect::<Result<Vec<_>>>()?;
                let partition_types = f
                    .params
                    .partition_by
                    .iter()
                    .map(|e| e.get_type(in_schema))
                    .collect::<datafusion::error::Result<Vec<_>>>()?;
                let order = f
                    .params
                    .order_by
                    .iter()
                    .map(|o| {
                        let opts =
                            datafusion::arrow::compute::SortOptions { descending: !o.asc, nulls_first: o.nulls_first };
                        Ok((phys(&o.expr, in_schema, &self.props)?, o.expr.get_type(in_schema)?, opts))
                    })
                    .collect::<Result<Vec<_>>>()?;
                op = op.with_rank(RankSpec { kind, partition, partition_types, order });
            }
        }
        l.node.ops.push(Box::new(op));
        Ok(l)
    }
}

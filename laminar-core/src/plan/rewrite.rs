//! The AST rewrite that runs before DataFusion plans a continuous query.
//!
//! - Window functions (`TUMBLE`, `HOP`, `SESSION`, `CUMULATE`), in `GROUP BY` or as table-valued
//!   functions in `FROM`, become a scan of a pseudo-relation (`__laminar_window_N`) recorded as a
//!   [`WindowBinding`]; `SELECT TUMBLE(ts, …)` becomes `window_start`.
//! - `ASOF JOIN … MATCH_CONDITION(…)` and `JOIN r FOR SYSTEM_TIME AS OF l.ts` become LEFT JOINs
//!   whose condition carries an [`ASOF_MARKER`] call, registered as a UDF ([`asof_marker_udf`]) so
//!   DataFusion type-checks it; the join lowering finds it and builds the ASOF operator.
//! - `JOIN r FOR SYSTEM_TIME AS OF PROCTIME()` becomes a plain join; `r`'s alias is recorded as a
//!   lookup table.

use std::collections::HashMap;

use datafusion::arrow::datatypes::DataType;
use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, Query,
    SetExpr, TableAlias, TableFactor,
};

use super::{RelationInfo, WindowBinding, unknown_relation};
use crate::error::{Error, Result, nearest_name};
use crate::operator::StreamKind;
use crate::operator::window::{TimeScale, WindowKind};
use crate::sql::{interval_micros, normalize_ident};

const WINDOW_FNS: [&str; 4] = ["tumble", "hop", "session", "cumulate"];

fn object_name_str(n: &ObjectName) -> String {
    n.0.iter()
        .map(|p| match p {
            ast::ObjectNamePart::Identifier(i) => normalize_ident(&i.value, i.quote_style.is_some()),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

fn expr_args(args: &FunctionArguments) -> Result<Vec<SqlExpr>> {
    match args {
        FunctionArguments::List(l) => l
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                other => Err(Error::plan(format!("unsupported window argument '{other}'"))),
            })
            .collect(),
        FunctionArguments::None => Ok(vec![]),
        FunctionArguments::Subquery(_) => Err(Error::plan("a window function takes a column and intervals")),
    }
}

/// The plain arguments of a table-valued function in FROM.
fn table_fn_args(args: &ast::TableFunctionArgs, what: &str) -> Result<Vec<SqlExpr>> {
    args.args
        .iter()
        .map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
            other => Err(Error::plan(format!("unsupported {what} argument '{other}'"))),
        })
        .collect()
}

fn ident_of(e: &SqlExpr, what: &str) -> Result<String> {
    match e {
        SqlExpr::Identifier(i) => Ok(normalize_ident(&i.value, i.quote_style.is_some())),
        SqlExpr::CompoundIdentifier(parts) => {
            let last = parts.last().expect("non-empty");
            Ok(normalize_ident(&last.value, last.quote_style.is_some()))
        }
        other => Err(Error::plan(format!("expected {what}, got '{other}'"))),
    }
}

fn interval_arg(e: &SqlExpr) -> Result<i64> {
    match e {
        SqlExpr::Interval(iv) => interval_micros(iv),
        other => Err(Error::plan(format!("expected an INTERVAL, got '{other}'"))),
    }
}

fn window_kind(func: &str, intervals: &[SqlExpr]) -> Result<WindowKind> {
    let iv: Vec<i64> = intervals.iter().map(interval_arg).collect::<Result<_>>()?;
    let kind = match (func, iv.as_slice()) {
        ("tumble", [size]) => WindowKind::Tumble { size: *size, offset: 0 },
        ("tumble", [size, offset]) => WindowKind::Tumble { size: *size, offset: *offset },
        ("hop", [slide, size]) => WindowKind::Hop { slide: *slide, size: *size },
        ("session", [gap]) => WindowKind::Session { gap: *gap },
        ("cumulate", [step, max]) => WindowKind::Cumulate { step: *step, max_size: *max },
        _ => {
            return Err(Error::plan(format!(
                "wrong arguments for {}: expected TUMBLE(ts, size [, offset]), HOP(ts, slide, size), SESSION(ts, gap) or CUMULATE(ts, step, max_size)",
                func.to_uppercase()
            )));
        }
    };
    kind.validate()?;
    Ok(kind)
}

/// Rewrites one query in place, collecting what the lowering needs to know of the rewrite.
pub(super) struct Rewriter<'a> {
    pub(super) relations: &'a HashMap<String, RelationInfo>,
    pub(super) bindings: Vec<WindowBinding>,
    /// Aliases of relations joined `FOR SYSTEM_TIME AS OF PROCTIME()` (lookup joins).
    pub(super) lookups: Vec<String>,
}

impl Rewriter<'_> {
    fn bind(&mut self, input: String, time_col: String, kind: WindowKind) -> Result<String> {
        let info = self.relations.get(&input).ok_or_else(|| unknown_relation(&input, self.relations))?;
        let field = info.schema.field_with_name(&time_col).map_err(|_| {
            let hint = nearest_name(&time_col, info.schema.fields().iter().map(|f| f.name().as_str()))
                .map(|n| format!("; did you mean '{n}'?"))
                .unwrap_or_default();
            Error::plan(format!("'{input}' has no column '{time_col}' to window on{hint}"))
        })?;
        if TimeScale::for_type(field.data_type()).is_none() {
            return Err(Error::plan(format!(
                "window column '{time_col}' is {}, expected TIMESTAMP or BIGINT epoch milliseconds",
                field.data_type()
            )));
        }
        if info.kind != StreamKind::AppendOnly {
            return Err(Error::plan(format!("'{input}' is a {} stream; windows need an append-only input", info.kind)));
        }
        let pseudo = format!("__laminar_window_{}", self.bindings.len());
        self.bindings.push(WindowBinding { pseudo: pseudo.clone(), input, time_col, kind });
        Ok(pseudo)
    }

    pub(super) fn query(&mut self, q: &mut Query) -> Result<()> {
        if let Some(with) = &mut q.with {
            for cte in &mut with.cte_tables {
                self.query(&mut cte.query)?;
            }
        }
        self.set_expr(&mut q.body)
    }

    fn set_expr(&mut self, s: &mut SetExpr) -> Result<()> {
        match s {
            SetExpr::Select(sel) => self.select(sel),
            SetExpr::Query(q) => self.query(q),
            SetExpr::SetOperation { left, right, .. } => {
                self.set_expr(left)?;
                self.set_expr(right)
            }
            _ => Ok(()),
        }
    }

    fn factor(&mut self, f: &mut TableFactor) -> Result<()> {
        match f {
            TableFactor::Table { name, alias, args: Some(args), .. } => {
                let fname = object_name_str(name);
                if !WINDOW_FNS.contains(&fname.as_str()) {
                    return Ok(());
                }
                let a = table_fn_args(args, "window")?;
                if a.len() < 3 {
                    return Err(Error::plan(format!(
                        "{}(table, time_column, intervals…) needs a table, a column and its intervals",
                        fname.to_uppercase()
                    )));
                }
                let input = ident_of(&a[0], "a source or stream name")?;
                let time_col = ident_of(&a[1], "the event-time column")?;
                let kind = window_kind(&fname, &a[2..])?;
                let pseudo = self.bind(input.clone(), time_col, kind)?;
                *name = ObjectName::from(vec![Ident::new(pseudo)]);
                if alias.is_none() {
                    *alias = Some(TableAlias { explicit: true, name: Ident::new(input), columns: vec![], at: None });
                }
                *f = match std::mem::replace(
                    f,
                    TableFactor::Table {
                        name: ObjectName(vec![]),
                        alias: None,
                        args: None,
                        with_hints: vec![],
                        version: None,
                        with_ordinality: false,
                        partitions: vec![],
                        json_path: None,
                        sample: None,
                        index_hints: vec![],
                    },
                ) {
                    TableFactor::Table {
                        name,
                        alias,
                        with_hints,
                        version,
                        with_ordinality,
                        partitions,
                        json_path,
                        sample,
                        index_hints,
                        ..
                    } => TableFactor::Table {
                        name,
                        alias,
                        args: None,
                        with_hints,
                        version,
                        with_ordinality,
                        partitions,
                        json_path,
                        sample,
                        index_hints,
                    },
                    other => other,
                };
                Ok(())
            }
            TableFactor::Derived { subquery, .. } => self.query(subquery),
            TableFactor::NestedJoin { table_with_joins, .. } => {
                self.factor(&mut table_with_joins.relation)?;
                for j in &mut table_with_joins.joins {
                    self.factor(&mut j.relation)?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `JOIN r FOR SYSTEM_TIME AS OF l.ts` (temporal: the version of r valid at l.ts, an ASOF
    /// join on r's event time over its upserts) and `… AS OF PROCTIME()` (lookup: r's current row).
    fn rewrite_system_time(&mut self, j: &mut ast::Join) -> Result<()> {
        use datafusion::sql::sqlparser::ast::{JoinConstraint, JoinOperator};
        let TableFactor::Table { name, alias, args: Some(args), .. } = &j.relation else { return Ok(()) };
        if object_name_str(name) != "__laminar_temporal" {
            return Ok(());
        }
        let a = table_fn_args(args, "FOR SYSTEM_TIME")?;
        let table = ident_of(&a[0], "a table name")?;
        let time = a[1].clone();
        let qual = alias
            .as_ref()
            .map(|x| normalize_ident(&x.name.value, x.name.quote_style.is_some()))
            .unwrap_or_else(|| table.clone());
        let info = self.relations.get(&table).ok_or_else(|| unknown_relation(&table, self.relations))?;
        let alias = alias.clone();
        j.relation = TableFactor::Table {
            name: ObjectName::from(vec![Ident::new(table.clone())]),
            alias,
            args: None,
            with_hints: vec![],
            version: None,
            with_ordinality: false,
            partitions: vec![],
            json_path: None,
            sample: None,
            index_hints: vec![],
        };
        let is_proctime = matches!(&time, SqlExpr::Function(f) if object_name_str(&f.name) == "proctime");
        if is_proctime {
            self.lookups.push(qual);
            return Ok(());
        }
        let time_col = info.time_col.map(|i| info.schema.field(i).name().clone()).ok_or_else(|| {
            Error::plan(format!(
                "FOR SYSTEM_TIME AS OF needs the event time of '{table}': declare WATERMARK FOR its time column"
            ))
        })?;
        let (constraint, code) = match &j.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => (c, 6),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, 7),
            _ => return Err(Error::plan("a temporal join (FOR SYSTEM_TIME AS OF) is a JOIN or a LEFT JOIN")),
        };
        if !matches!(constraint, JoinConstraint::On(_)) {
            return Err(Error::plan("a temporal join takes its key equalities in ON (…)"));
        }
        let marker = format!("{ASOF_MARKER}({time}, \"{qual}\".\"{time_col}\", {code})");
        left_join_with_marker(j, &marker)
    }

    /// Windows the input of the subquery `q` on its column `time_col` (a window function in the
    /// GROUP BY of a query over `q`): `q` must be one SELECT without joins or aggregation that
    /// passes `time_col` through as a plain column; its input (a relation, or a subquery of the
    /// same kind) is windowed, and `window_start`, `window_end` are added to its output.
    fn push_window(&mut self, q: &mut ast::Query, time_col: &str, kind: WindowKind) -> Result<()> {
        use datafusion::sql::sqlparser::ast::{SelectItem, SetExpr};
        let msg = |why: String| {
            Error::plan(format!(
                "GROUP BY with a window function over a subquery: {why}; or window its input inside the subquery (GROUP BY … TUMBLE there)"
            ))
        };
        if q.with.is_some() {
            return Err(msg("the subquery has a WITH clause".into()));
        }
        let SetExpr::Select(sel) = q.body.as_mut() else {
            return Err(msg("the subquery must be one SELECT (no UNION or VALUES)".into()));
        };
        if sel.from.len() != 1 || !sel.from[0].joins.is_empty() {
            return Err(msg("the subquery must read one relation, without joins".into()));
        }
        let grouped = match &sel.group_by {
            GroupByExpr::Expressions(e, _) => !e.is_empty(),
            _ => true,
        };
        if grouped || sel.having.is_some() || sel.distinct.is_some() {
            return Err(msg("the subquery must not aggregate (GROUP BY, HAVING, DISTINCT)".into()));
        }
        let mut inner = None;
        let mut wildcard = false;
        for item in &sel.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    if ident_of(e, "").is_ok_and(|n| n == time_col) {
                        inner = Some(time_col.to_string());
                    }
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    if normalize_ident(&alias.value, alias.quote_style.is_some()) == time_col {
                        inner = Some(ident_of(expr, "").map_err(|_| {
                            msg(format!(
                                "'{time_col}' must be a column of the subquery's input, passed through unchanged"
                            ))
                        })?);
                    }
                }
                _ => wildcard = true,
            }
        }
        let inner = match (inner, wildcard) {
            (Some(n), _) => n,
            (None, true) => time_col.to_string(),
            (None, false) => return Err(msg(format!("it has no column '{time_col}'"))),
        };
        if !wildcard {
            for c in ["window_start", "window_end"] {
                sel.projection.push(SelectItem::UnnamedExpr(SqlExpr::Identifier(Ident::new(c))));
            }
        }
        match &mut sel.from[0].relation {
            TableFactor::Table { name, alias, args: None, .. } => {
                let input = object_name_str(name);
                let pseudo = self.bind(input.clone(), inner, kind)?;
                *name = ObjectName::from(vec![Ident::new(pseudo)]);
                if alias.is_none() {
                    *alias = Some(TableAlias { explicit: true, name: Ident::new(input), columns: vec![], at: None });
                }
                Ok(())
            }
            TableFactor::Derived { subquery, .. } => self.push_window(subquery, &inner, kind),
            _ => Err(msg("its FROM must be a source, a stream or another subquery".into())),
        }
    }

    fn select(&mut self, sel: &mut ast::Select) -> Result<()> {
        for twj in &mut sel.from {
            self.factor(&mut twj.relation)?;
            for j in &mut twj.joins {
                self.factor(&mut j.relation)?;
                self.rewrite_system_time(j)?;
                rewrite_asof(j)?;
            }
        }
        let GroupByExpr::Expressions(exprs, _) = &mut sel.group_by else { return Ok(()) };
        let pos = exprs
            .iter()
            .position(|e| matches!(e, SqlExpr::Function(f) if WINDOW_FNS.contains(&object_name_str(&f.name).as_str())));
        let Some(pos) = pos else { return Ok(()) };
        let SqlExpr::Function(func) = exprs[pos].clone() else { unreachable!() };
        let fname = object_name_str(&func.name);
        let args = expr_args(&func.args)?;
        if args.len() < 2 {
            return Err(Error::plan(format!(
                "{}(ts, …) needs the event-time column and its intervals",
                fname.to_uppercase()
            )));
        }
        let time_col = ident_of(&args[0], "the event-time column")?;
        let kind = window_kind(&fname, &args[1..])?;
        if sel.from.len() != 1 || !sel.from[0].joins.is_empty() {
            return Err(Error::plan("GROUP BY with a window function needs exactly one input relation in FROM"));
        }
        match &mut sel.from[0].relation {
            TableFactor::Table { name, alias, args: None, .. } => {
                let input = object_name_str(name);
                let pseudo = self.bind(input.clone(), time_col, kind)?;
                *name = ObjectName::from(vec![Ident::new(pseudo)]);
                if alias.is_none() {
                    *alias = Some(TableAlias { explicit: true, name: Ident::new(input), columns: vec![], at: None });
                }
            }
            // A subquery that passes the event-time column through: the window is assigned to
            // its input, and window_start/window_end pass through it too.
            TableFactor::Derived { subquery, .. } => self.push_window(subquery, &time_col, kind)?,
            _ => {
                return Err(Error::plan(
                    "GROUP BY with a window function needs a source, a stream or a subquery in FROM",
                ));
            }
        }
        let call = exprs[pos].to_string();
        exprs.splice(
            pos..=pos,
            [SqlExpr::Identifier(Ident::new("window_start")), SqlExpr::Identifier(Ident::new("window_end"))],
        );
        // `SELECT TUMBLE(ts, …)` means the window's start.
        let _ = ast::visit_expressions_mut(&mut sel.projection, |e: &mut SqlExpr| {
            if e.to_string() == call {
                *e = SqlExpr::Identifier(Ident::new("window_start"));
            }
            std::ops::ControlFlow::<()>::Continue(())
        });
        Ok(())
    }
}

/// The marker an ASOF join leaves in its (LEFT) join condition: `__laminar_asof(a, b, op)`.
pub(super) const ASOF_MARKER: &str = "__laminar_asof";

/// `l ASOF JOIN r MATCH_CONDITION(a op b) ON …` becomes `l LEFT JOIN r ON … AND
/// __laminar_asof(a, b, op)`, which DataFusion plans and type-checks like any join; the lowering
/// finds the marker and builds the ASOF operator.
fn rewrite_asof(j: &mut ast::Join) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{BinaryOperator as B, JoinConstraint, JoinOperator};
    let JoinOperator::AsOf { match_condition, constraint } = &j.join_operator else { return Ok(()) };
    let (a, b, code) = match match_condition {
        SqlExpr::BinaryOp { left, op, right } => {
            let code = match op {
                B::GtEq => 0,
                B::Gt => 1,
                B::LtEq => 2,
                B::Lt => 3,
                other => {
                    return Err(Error::plan(format!(
                        "MATCH_CONDITION takes >=, >, <=, < or NEAREST(l.ts, r.ts), not {other}"
                    )));
                }
            };
            (left.to_string(), right.to_string(), code)
        }
        SqlExpr::Function(f) if object_name_str(&f.name) == "nearest" => {
            let args = expr_args(&f.args)?;
            if args.len() != 2 {
                return Err(Error::plan("NEAREST takes the two time columns: NEAREST(l.ts, r.ts)"));
            }
            (args[0].to_string(), args[1].to_string(), 4)
        }
        other => {
            return Err(Error::plan(format!(
                "MATCH_CONDITION takes l.ts >= r.ts (or >, <=, <) or NEAREST(l.ts, r.ts), not '{other}'"
            )));
        }
    };
    if !matches!(constraint, JoinConstraint::On(_) | JoinConstraint::None) {
        return Err(Error::plan("ASOF JOIN takes its key equalities in ON (…)"));
    }
    left_join_with_marker(j, &format!("{ASOF_MARKER}({a}, {b}, {code})"))
}

/// Makes `j` a LEFT JOIN whose condition is its ON condition (if any) AND `marker`.
fn left_join_with_marker(j: &mut ast::Join, marker: &str) -> Result<()> {
    use datafusion::sql::sqlparser::ast::{JoinConstraint, JoinOperator};
    let on = match &j.join_operator {
        JoinOperator::AsOf { constraint: JoinConstraint::On(e), .. }
        | JoinOperator::Join(JoinConstraint::On(e))
        | JoinOperator::Inner(JoinConstraint::On(e))
        | JoinOperator::Left(JoinConstraint::On(e))
        | JoinOperator::LeftOuter(JoinConstraint::On(e)) => format!("({e}) AND {marker}"),
        _ => marker.to_string(),
    };
    let dialect = datafusion::sql::sqlparser::dialect::GenericDialect {};
    let expr = datafusion::sql::sqlparser::parser::Parser::new(&dialect)
        .try_with_sql(&on)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| Error::internal(format!("rewriting a join condition: {e}")))?;
    j.join_operator = JoinOperator::LeftOuter(JoinConstraint::On(expr));
    Ok(())
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct AsofMarker(datafusion::logical_expr::Signature);

impl datafusion::logical_expr::ScalarUDFImpl for AsofMarker {
    fn name(&self) -> &str {
        ASOF_MARKER
    }
    fn signature(&self) -> &datafusion::logical_expr::Signature {
        &self.0
    }
    fn return_type(&self, _: &[DataType]) -> datafusion::error::Result<DataType> {
        Ok(DataType::Boolean)
    }
    fn invoke_with_args(
        &self,
        _: datafusion::logical_expr::ScalarFunctionArgs,
    ) -> datafusion::error::Result<datafusion::logical_expr::ColumnarValue> {
        datafusion::common::internal_err!("the ASOF marker is planned away, never evaluated")
    }
}

pub(super) fn asof_marker_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(AsofMarker(datafusion::logical_expr::Signature::any(
        3,
        datafusion::logical_expr::Volatility::Immutable,
    )))
}

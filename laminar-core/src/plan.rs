//! From a parsed continuous query to a chain of incremental operators.
//!
//! 1. Window clauses are rewritten in the AST: `GROUP BY …, TUMBLE(ts, size)` and the table-valued
//!    form `FROM TUMBLE(t, ts, size)` both become a scan of a *windowed relation*: `t`'s columns
//!    plus `window_start`/`window_end`, grouped by those columns.
//! 2. DataFusion plans and type-checks the query (its analyzer, not its optimizer, so the plan keeps
//!    the shape of the SQL).
//! 3. The logical plan is lowered bottom-up: windowed scan → `WindowAssign`; Filter/Projection →
//!    `Stateless`; Aggregate → `Aggregate` or `SessionAggregate`; Join → a join node; Union → a
//!    `UnionAll` node over all its inputs. Expressions are compiled to DataFusion `PhysicalExpr`s
//!    here, once.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::common::tree_node::TreeNode;
use datafusion::datasource::MemTable;
use datafusion::logical_expr::{Expr, LogicalPlan};
use datafusion::physical_expr::execution_props::ExecutionProps;
use datafusion::physical_expr::{PhysicalExpr, create_physical_expr};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{
    self, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName, Query,
    SetExpr, TableAlias, TableFactor,
};

use crate::df_session::block_on;
/// Re-exported for the callers that reach the session through the planner (db.rs).
pub(crate) use crate::df_session::session_context;
use crate::error::{Error, Result, nearest_name};
use crate::operator::aggregate::{AggSpec, Aggregate, GroupCol, check_emit};
use crate::operator::join::{HashJoin, JoinType, SideSpec};
use crate::operator::session::SessionAggregate;
use crate::operator::stateless::{Stateless, Step};
use crate::operator::window::{TimeScale, WindowAssign, WindowKind, windowed_schema};
use crate::operator::{Operator, StreamKind, WEIGHT_COLUMN};
use crate::pipeline::Node;
use crate::sql::{EmitMode, interval_micros, normalize_ident};

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
}

/// Plans `query` into a DataFusion logical plan over the given relations (analyzed, not optimized).
pub(crate) fn logical_plan(
    query: Query,
    relations: &HashMap<String, RelationInfo>,
    extra: &[(String, SchemaRef)],
) -> Result<LogicalPlan> {
    let ctx = session_context();
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

// ---------------------------------------------------------------- window rewrite (AST)

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

struct Rewriter<'a> {
    relations: &'a HashMap<String, RelationInfo>,
    bindings: Vec<WindowBinding>,
    /// Aliases of relations joined `FOR SYSTEM_TIME AS OF PROCTIME()` (lookup joins).
    lookups: Vec<String>,
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

    fn query(&mut self, q: &mut Query) -> Result<()> {
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
        let TableFactor::Table { name, alias, args: None, .. } = &mut sel.from[0].relation else {
            return Err(Error::plan(
                "GROUP BY with a window function needs a source or stream name in FROM; use the table-valued form TUMBLE(t, ts, size) for subqueries",
            ));
        };
        let input = object_name_str(name);
        let pseudo = self.bind(input.clone(), time_col, kind)?;
        *name = ObjectName::from(vec![Ident::new(pseudo)]);
        if alias.is_none() {
            *alias = Some(TableAlias { explicit: true, name: Ident::new(input), columns: vec![], at: None });
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
pub(crate) const ASOF_MARKER: &str = "__laminar_asof";

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

fn asof_marker_udf() -> datafusion::logical_expr::ScalarUDF {
    datafusion::logical_expr::ScalarUDF::new_from_impl(AsofMarker(datafusion::logical_expr::Signature::any(
        3,
        datafusion::logical_expr::Volatility::Immutable,
    )))
}

// ---------------------------------------------------------------- lowering

struct Lowered {
    node: Node,
    kind: StreamKind,
    /// Indices of window_start/window_end in the output, with the window assigned below.
    window: Option<(usize, usize, WindowKind)>,
    late_schema: Option<SchemaRef>,
    aggregated: bool,
    /// See [`RelationInfo::time_col`].
    time: Option<usize>,
}

struct Lowerer<'a> {
    relations: &'a HashMap<String, RelationInfo>,
    /// Every column name an expression of the query reads; None keeps every column.
    used: Option<std::collections::HashSet<String>>,
    bindings: &'a [WindowBinding],
    lookups: &'a [String],
    opts: &'a PlanOptions,
    props: ExecutionProps,
}

fn phys(e: &Expr, schema: &DFSchema, props: &ExecutionProps) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(create_physical_expr(e, schema, props, &Default::default())?)
}

fn push_step(ops: &mut Vec<Box<dyn Operator>>, step: Step, weighted: bool) {
    ops.push(Box::new(Stateless { steps: vec![step], weighted }));
}

fn with_weight(schema: &Schema, weighted: bool) -> SchemaRef {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    if weighted {
        fields.push(Field::new(WEIGHT_COLUMN, DataType::Int64, false));
    }
    Arc::new(Schema::new(fields))
}

impl Lowerer<'_> {
    fn lower(&self, plan: &LogicalPlan) -> Result<Lowered> {
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
            },
            kind,
            window,
            late_schema,
            aggregated,
            time,
        })
    }

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
        l.aggregated = true;
        l.window = None;
        l.time = None;
        Ok(l)
    }

    fn lower_aggregate(&self, agg: &datafusion::logical_expr::Aggregate) -> Result<Lowered> {
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
        l.kind = kind;
        l.window = match (ws, we, l.window) {
            (Some(a), Some(b), Some((_, _, k))) => Some((a, b, k)),
            _ => None,
        };
        Ok(l)
    }
}

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

/// Runs the two optimizer rules joins need: filters pushed into and below joins (so `WHERE`
/// conditions become join conditions and per-side filters), then equalities between the sides
/// extracted as hash keys. Only for plans with a join: other plans keep the shape of the SQL.
fn optimize_joins(plan: LogicalPlan) -> Result<LogicalPlan> {
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
            },
            kind: StreamKind::AppendOnly,
            window: None,
            late_schema: None,
            aggregated: l.aggregated || r.aggregated,
            time: None,
        })
    }

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
        Ok(l)
    }

    /// OVER (…) per event-time window: every function partitions by window_start or window_end.
    fn lower_over(&self, w: &datafusion::logical_expr::Window) -> Result<Lowered> {
        let mut l = self.lower(&w.input)?;
        if l.kind != StreamKind::AppendOnly {
            return Err(Error::not_implemented(format!("OVER (…) over a {} input is not available yet", l.kind)));
        }
        let in_schema = w.input.schema();
        // Per window when every function partitions by the window: window_end identifies one,
        // window_start does when the size is fixed. Otherwise OVER runs over the stream.
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
        if !per_window {
            return self.lower_stream_over(w, l);
        }
        let Some((_, we, kind)) = l.window else { unreachable!("per_window needs a window") };
        if matches!(kind, WindowKind::Session { .. }) && !l.aggregated {
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
        );
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

    fn lower_join(&self, j: &datafusion::logical_expr::Join) -> Result<Lowered> {
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
            },
            kind: if retracts { StreamKind::Changelog } else { StreamKind::AppendOnly },
            window: None,
            late_schema: None,
            aggregated: l.aggregated || r.aggregated,
            time: None,
        })
    }
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
    let plan = logical_plan(query, relations, &extra)?;
    let has_join = plan.exists(|p| {
        Ok(matches!(p, LogicalPlan::Join(_))
            || p.expressions()
                .iter()
                .any(|e| e.exists(|x| Ok(matches!(x, Expr::Exists(_) | Expr::InSubquery(_)))).unwrap_or(false)))
    })?;
    let plan = if has_join { optimize_joins(plan)? } else { plan };
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
    Ok(PlannedQuery { inputs, root: l.node, time_col: l.time, output_schema, kind: l.kind, late_schema: l.late_schema })
}

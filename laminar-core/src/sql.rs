//! The SQL front end: splits text into statements, recognises LaminarDB's own statements and
//! streaming clauses (WATERMARK, EMIT, ALLOW LATENESS, LATE DATA TO, window TVFs), and hands the
//! standard parts to sqlparser. Everything here is text → AST; planning lives in `plan`.
//!
//! This file holds the statement types, the entry points ([`parse_sql`], [`parse_one`]), the
//! dispatch on a statement's first keywords with the parsing of the short statements (DROP, SHOW,
//! DESCRIBE, EXPLAIN, INSERT, DELETE, CHECKPOINT), and the identifier and interval rules the
//! planner shares. `ddl` parses CREATE SOURCE/TABLE/STREAM/MATERIALIZED VIEW/SINK, `tokens` holds
//! the token cursor and the token-level rewrites done before sqlparser sees a query, and `depth`
//! refuses statements nested deeper than the engine can recurse.

mod ddl;
mod depth;
mod tokens;

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{self, Expr as SqlExpr, Query};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer};

use self::ddl::{parse_create_sink, parse_create_source, parse_create_stream};
pub use self::depth::MAX_EXPR_DEPTH;
use self::depth::check_depth;
use self::tokens::{Cursor, finish_parser, parse_query_tokens, parser_for, pos_of};
use crate::error::{Error, Result, SqlPosition};

/// How a stream emits its results (DESIGN §3, "EMIT").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmitMode {
    /// One row per (key, window) when the watermark passes the window end.
    OnWindowClose,
    /// One row per (key, window) at window end + allowed lateness; never corrected.
    Final,
    /// After each processed batch, the new value of every changed group (upsert by key).
    OnUpdate,
    /// Z-set pairs: −1 previous row, +1 new row, for changed groups.
    Changes,
    /// Every interval of processing time, the current value of each group changed since.
    Every(Duration),
}

impl std::fmt::Display for EmitMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EmitMode::OnWindowClose => f.write_str("ON WINDOW CLOSE"),
            EmitMode::Final => f.write_str("FINAL"),
            EmitMode::OnUpdate => f.write_str("ON UPDATE"),
            EmitMode::Changes => f.write_str("CHANGES"),
            EmitMode::Every(d) => write!(f, "EVERY {}ms", d.as_millis()),
        }
    }
}

/// The watermark declaration of a source: `WATERMARK FOR col [AS col - delay]`.
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkDecl {
    pub column: String,
    /// Delay in the column's own unit: microseconds for TIMESTAMP, milliseconds for BIGINT.
    /// Parsed as an interval (µs) or a plain integer; the planner checks it against the type.
    pub delay: WatermarkDelay,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WatermarkDelay {
    None,
    IntervalMicros(i64),
    Integer(i64),
}

#[derive(Debug, Clone)]
pub struct CreateSource {
    pub name: String,
    pub or_replace: bool,
    pub if_not_exists: bool,
    /// The column list re-rendered as `CREATE TABLE` text, typed by DataFusion's mapping.
    pub columns_sql: String,
    pub watermark: Option<WatermarkDecl>,
    pub options: BTreeMap<String, String>,
    pub connector: Option<String>,
    /// `CREATE TABLE`: the PRIMARY KEY columns (a source has none).
    pub primary_key: Vec<String>,
    pub table: bool,
}

/// `CREATE [OR REPLACE] SINK [IF NOT EXISTS] name FROM input INTO <KIND> [WITH (…)]`.
#[derive(Debug, Clone)]
pub struct CreateSink {
    pub name: String,
    pub or_replace: bool,
    pub if_not_exists: bool,
    /// The stream, materialized view, table or source whose output the sink writes.
    pub input: String,
    pub connector: String,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub struct CreateStream {
    pub name: String,
    pub materialized: bool,
    pub or_replace: bool,
    pub if_not_exists: bool,
    pub query: Box<Query>,
    pub emit: Option<EmitMode>,
    pub allowed_lateness: Option<Duration>,
    pub late_data_to: Option<String>,
    /// `STATE TTL INTERVAL '…'`: join rows without a time bound are forgotten once the watermark
    /// is this far past their event time.
    pub state_ttl: Option<Duration>,
}

/// Kinds of catalog objects, as `SHOW` and `DROP` name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    Source,
    Stream,
    MaterializedView,
    Table,
    Sink,
}

impl ObjectKind {
    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Source => "source",
            ObjectKind::Stream => "stream",
            ObjectKind::MaterializedView => "materialized view",
            ObjectKind::Table => "table",
            ObjectKind::Sink => "sink",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Statement {
    CreateSource(CreateSource),
    CreateStream(CreateStream),
    CreateSink(CreateSink),
    Drop {
        kind: Option<ObjectKind>,
        names: Vec<String>,
        if_exists: bool,
        cascade: bool,
    },
    Show(ObjectKind),
    /// `SHOW FUNCTIONS`: the user-defined functions.
    ShowFunctions,
    /// `SHOW PARTITIONS`: the partitions a consumer group's member owns (group mode).
    ShowPartitions,
    Describe(String),
    ShowCreate(String),
    Explain(Box<Statement>),
    /// `EXPLAIN ANALYZE name`: a running stream's operators with their counters.
    ExplainAnalyze(String),
    Insert {
        table: String,
        columns: Vec<String>,
        source: Box<Query>,
    },
    /// `DELETE FROM table [WHERE …]`.
    Delete {
        table: String,
        selection: Option<ast::Expr>,
    },
    Query(Box<Query>),
    Checkpoint,
}

/// One statement with the text it came from (kept for `SHOW CREATE`).
#[derive(Debug, Clone)]
pub struct ParsedStatement {
    pub statement: Statement,
    pub text: String,
}

/// Splits `sql` into statements at top-level semicolons and parses each.
pub fn parse_sql(sql: &str) -> Result<Vec<ParsedStatement>> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql).with_unescape(true).tokenize_with_location().map_err(|e| {
        let pos = SqlPosition { line: e.location.line, column: e.location.column };
        Error::syntax(e.message.clone()).with_position(Some(pos))
    })?;
    let line_starts: Vec<usize> = std::iter::once(0).chain(sql.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let offset_of = |t: &TokenWithSpan, end: bool| -> usize {
        let loc = if end { t.span.end } else { t.span.start };
        if loc.line == 0 {
            return if end { sql.len() } else { 0 };
        }
        let ls = line_starts.get(loc.line as usize - 1).copied().unwrap_or(sql.len());
        // Columns count characters, not bytes.
        sql[ls..].char_indices().nth(loc.column as usize - 1).map(|(i, _)| ls + i).unwrap_or(sql.len())
    };
    let mut out = Vec::new();
    let mut current: Vec<TokenWithSpan> = Vec::new();
    let mut depth = 0i32;
    let flush = |current: &mut Vec<TokenWithSpan>, out: &mut Vec<ParsedStatement>| -> Result<()> {
        if current.is_empty() {
            return Ok(());
        }
        let text = sql[offset_of(&current[0], false)..offset_of(current.last().unwrap(), true)].trim().to_string();
        let toks = std::mem::take(current);
        check_depth(&toks)?;
        out.push(ParsedStatement { statement: parse_statement(toks)?, text });
        Ok(())
    };
    for t in tokens {
        match &t.token {
            Token::Whitespace(_) => continue,
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::SemiColon if depth <= 0 => {
                flush(&mut current, &mut out)?;
                continue;
            }
            _ => {}
        }
        current.push(t);
    }
    flush(&mut current, &mut out)?;
    Ok(out)
}

/// Parses exactly one statement.
pub fn parse_one(sql: &str) -> Result<ParsedStatement> {
    let mut v = parse_sql(sql)?;
    match v.len() {
        0 => Err(Error::syntax("empty SQL statement")),
        1 => Ok(v.pop().unwrap()),
        n => Err(Error::invalid_argument(format!("expected one SQL statement, got {n}"))),
    }
}

/// Unquoted identifiers are case-insensitive (lower-cased), as in DataFusion.
pub fn normalize_ident(s: &str, quoted: bool) -> String {
    if quoted { s.to_string() } else { s.to_lowercase() }
}

fn parse_statement(toks: Vec<TokenWithSpan>) -> Result<Statement> {
    let mut c = Cursor { toks, pos: 0 };
    if c.eat_kw("CREATE") {
        let or_replace = c.eat_kws(&["OR", "REPLACE"]);
        if c.eat_kw("SOURCE") {
            return parse_create_source(&mut c, or_replace, false).map(Statement::CreateSource);
        }
        if c.eat_kw("STREAM") {
            return parse_create_stream(&mut c, or_replace, false).map(Statement::CreateStream);
        }
        if c.eat_kws(&["MATERIALIZED", "VIEW"]) {
            return parse_create_stream(&mut c, or_replace, true).map(Statement::CreateStream);
        }
        if c.eat_kw("TABLE") {
            return parse_create_source(&mut c, or_replace, true).map(Statement::CreateSource);
        }
        if c.eat_kw("SINK") {
            return parse_create_sink(&mut c, or_replace).map(Statement::CreateSink);
        }
        return Err(c.error_here("expected SOURCE, TABLE, STREAM, MATERIALIZED VIEW or SINK after CREATE"));
    }
    if c.eat_kw("DROP") {
        let kind = parse_object_kind(&mut c);
        let if_exists = c.eat_kws(&["IF", "EXISTS"]);
        let mut names = vec![c.ident("a name")?];
        while c.peek().is_some_and(|t| t.token == Token::Comma) {
            c.pos += 1;
            names.push(c.ident("a name")?);
        }
        let cascade = c.eat_kw("CASCADE");
        if !cascade {
            c.eat_kw("RESTRICT");
        }
        if !c.at_end() {
            return Err(c.error_here("unexpected text after DROP"));
        }
        return Ok(Statement::Drop { kind, names, if_exists, cascade });
    }
    if c.eat_kw("SHOW") {
        if c.eat_kw("CREATE") {
            let _ = parse_object_kind(&mut c);
            let name = c.ident("a name")?;
            return Ok(Statement::ShowCreate(name));
        }
        if c.eat_kw("FUNCTIONS") {
            if !c.at_end() {
                return Err(c.error_here("unexpected text after SHOW FUNCTIONS"));
            }
            return Ok(Statement::ShowFunctions);
        }
        if c.eat_kw("PARTITIONS") {
            if !c.at_end() {
                return Err(c.error_here("unexpected text after SHOW PARTITIONS"));
            }
            return Ok(Statement::ShowPartitions);
        }
        let kind = if c.eat_kw("SOURCES") {
            ObjectKind::Source
        } else if c.eat_kw("STREAMS") {
            ObjectKind::Stream
        } else if c.eat_kws(&["MATERIALIZED", "VIEWS"]) || c.eat_kw("VIEWS") {
            ObjectKind::MaterializedView
        } else if c.eat_kw("TABLES") {
            ObjectKind::Table
        } else if c.eat_kw("SINKS") {
            ObjectKind::Sink
        } else {
            return Err(c.error_here(
                "expected SOURCES, STREAMS, MATERIALIZED VIEWS, TABLES, SINKS, FUNCTIONS, PARTITIONS or CREATE after SHOW",
            ));
        };
        if !c.at_end() {
            return Err(c.error_here("unexpected text after SHOW"));
        }
        return Ok(Statement::Show(kind));
    }
    if c.eat_kw("DESCRIBE") || c.eat_kw("DESC") {
        let _ = parse_object_kind(&mut c);
        let name = c.ident("a name")?;
        if !c.at_end() {
            return Err(c.error_here("unexpected text after DESCRIBE"));
        }
        return Ok(Statement::Describe(name));
    }
    if c.eat_kw("EXPLAIN") {
        if c.eat_kw("ANALYZE") {
            let name = c.ident("the name of a stream or materialized view")?;
            if !c.at_end() {
                return Err(c.error_here("unexpected text after EXPLAIN ANALYZE <stream>"));
            }
            return Ok(Statement::ExplainAnalyze(name));
        }
        let inner = parse_statement(c.rest())?;
        return match inner {
            Statement::CreateStream(_) | Statement::Query(_) => Ok(Statement::Explain(Box::new(inner))),
            _ => Err(Error::syntax("EXPLAIN takes a SELECT or a CREATE STREAM / MATERIALIZED VIEW")),
        };
    }
    if c.eat_kw("CHECKPOINT") {
        return Ok(Statement::Checkpoint);
    }
    if c.eat_kw("INSERT") {
        c.expect_kw("INTO")?;
        let table = c.ident("a source name")?;
        let mut columns = Vec::new();
        if c.peek().is_some_and(|t| t.token == Token::LParen) {
            let close = c.matching_paren(c.pos)?;
            let inner: Vec<_> = c.toks[c.pos + 1..close].to_vec();
            c.pos = close + 1;
            for t in inner {
                let pos = pos_of(&t);
                match t.token {
                    Token::Word(w) => columns.push(normalize_ident(&w.value, w.quote_style.is_some())),
                    Token::Comma => {}
                    other => {
                        return Err(
                            Error::syntax(format!("unexpected '{other}' in INSERT column list")).with_position(pos)
                        );
                    }
                }
            }
        }
        let source = parse_query_tokens(c.rest())?;
        return Ok(Statement::Insert { table, columns, source });
    }
    if c.eat_kw("DELETE") {
        c.expect_kw("FROM")?;
        let table = c.ident("a table name")?;
        let selection = if c.eat_kw("WHERE") {
            let mut p = parser_for(c.rest());
            let e = p.parse_expr().map_err(|e| Error::from_parser(&e))?;
            finish_parser(&mut p)?;
            Some(e)
        } else if c.at_end() {
            None
        } else {
            return Err(c.error_here("expected WHERE or the end of DELETE"));
        };
        return Ok(Statement::Delete { table, selection });
    }
    if c.peek_kw("SELECT")
        || c.peek_kw("WITH")
        || c.peek_kw("VALUES")
        || c.peek().is_some_and(|t| t.token == Token::LParen)
    {
        return parse_query_tokens(c.rest()).map(Statement::Query);
    }
    let found = c.peek().map(|t| t.token.to_string()).unwrap_or_default();
    Err(c.error_here(format!(
        "unknown statement starting with '{found}'; expected CREATE, DROP, SHOW, DESCRIBE, EXPLAIN, INSERT, DELETE, SELECT or CHECKPOINT"
    )))
}

fn parse_object_kind(c: &mut Cursor) -> Option<ObjectKind> {
    if c.eat_kw("SOURCE") {
        Some(ObjectKind::Source)
    } else if c.eat_kw("STREAM") {
        Some(ObjectKind::Stream)
    } else if c.eat_kws(&["MATERIALIZED", "VIEW"]) || c.eat_kw("VIEW") {
        Some(ObjectKind::MaterializedView)
    } else if c.eat_kw("TABLE") {
        Some(ObjectKind::Table)
    } else if c.eat_kw("SINK") {
        Some(ObjectKind::Sink)
    } else {
        None
    }
}

/// Parses an `INTERVAL '…' UNIT` (or a quoted `'5s'`) starting at `start`; returns µs and the
/// index after it.
fn parse_interval_at(toks: &[TokenWithSpan], start: usize) -> Result<(i64, usize)> {
    let pos = toks.get(start).and_then(pos_of);
    if let Some(Token::SingleQuotedString(s)) = toks.get(start).map(|t| &t.token) {
        let d = crate::config::parse_duration(s).map_err(|m| Error::syntax(m).with_position(pos))?;
        return Ok((d.as_micros() as i64, start + 1));
    }
    let mut ts: Vec<TokenWithSpan> = toks[start..].to_vec();
    ts.push(TokenWithSpan::wrap(Token::EOF));
    let mut p = parser_for(ts);
    let expr = p.parse_prefix().map_err(|e| Error::from_parser(&e))?;
    let used = p.index();
    match expr {
        SqlExpr::Interval(iv) => Ok((interval_micros(&iv).map_err(|e| e.with_position(pos))?, start + used)),
        other => Err(Error::syntax(format!("expected an INTERVAL, got '{other}'")).with_position(pos)),
    }
}

/// Evaluates an interval literal to microseconds. Months and years have no fixed length and are
/// rejected.
pub fn interval_micros(iv: &ast::Interval) -> Result<i64> {
    let text = match iv.value.as_ref() {
        SqlExpr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) | ast::Value::Number(s, _) => s.clone(),
            other => return Err(Error::syntax(format!("unsupported interval value {other}"))),
        },
        other => return Err(Error::syntax(format!("unsupported interval value {other}"))),
    };
    let unit_us = |u: &str| -> Result<f64> {
        Ok(match u.to_ascii_lowercase().trim_end_matches('s') {
            "microsecond" | "us" => 1.0,
            "millisecond" | "m" if u.eq_ignore_ascii_case("ms") => 1e3,
            "millisecond" => 1e3,
            "second" | "sec" => 1e6,
            "minute" | "min" => 60e6,
            "hour" | "h" => 3600e6,
            "day" | "d" => 86_400e6,
            "week" => 7.0 * 86_400e6,
            "month" | "year" | "quarter" | "decade" | "century" => {
                return Err(Error::plan(format!(
                    "interval unit '{u}' has no fixed length; use days, hours, minutes or seconds"
                )));
            }
            other => return Err(Error::syntax(format!("unknown interval unit '{other}'"))),
        })
    };
    let total = if let Some(field) = &iv.leading_field {
        let n: f64 =
            text.trim().parse().map_err(|_| Error::syntax(format!("interval value '{text}' is not a number")))?;
        n * unit_us(&field.to_string())?
    } else {
        // '1 minute 30 seconds', '5 s'
        let parts: Vec<&str> = text.split_whitespace().collect();
        if !parts.len().is_multiple_of(2) {
            return Err(Error::syntax(format!("cannot read interval '{text}'")));
        }
        let mut sum = 0.0;
        for pair in parts.chunks(2) {
            let n: f64 = pair[0].parse().map_err(|_| Error::syntax(format!("cannot read interval '{text}'")))?;
            sum += n * unit_us(pair[1])?;
        }
        sum
    };
    Ok(total.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_source_with_watermark_and_options() {
        let s = parse_one(
            "CREATE SOURCE trades (sym VARCHAR NOT NULL, price DOUBLE, ts TIMESTAMP, \
             WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (idle_timeout = '2s')",
        )
        .unwrap();
        let Statement::CreateSource(cs) = s.statement else { panic!("{:?}", s.statement) };
        assert_eq!(cs.name, "trades");
        assert_eq!(cs.watermark.unwrap().delay, WatermarkDelay::IntervalMicros(5_000_000));
        assert_eq!(cs.options.get("idle_timeout").map(String::as_str), Some("2s"));
        assert!(cs.columns_sql.contains("price DOUBLE"), "{}", cs.columns_sql);
    }

    #[test]
    fn create_stream_takes_out_streaming_clauses() {
        let s = parse_one(
            "CREATE STREAM s AS SELECT k, COUNT(*) FROM t GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE) \
             EMIT ON WINDOW CLOSE ALLOW LATENESS INTERVAL '10' SECOND LATE DATA TO late_s",
        )
        .unwrap();
        let Statement::CreateStream(cs) = s.statement else { panic!() };
        assert_eq!(cs.emit, Some(EmitMode::OnWindowClose));
        assert_eq!(cs.allowed_lateness, Some(Duration::from_secs(10)));
        assert_eq!(cs.late_data_to.as_deref(), Some("late_s"));
        assert!(cs.query.to_string().contains("GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)"), "{}", cs.query);
    }

    #[test]
    fn emit_every_and_aliases() {
        for (sql, mode) in [
            ("EMIT AFTER WATERMARK", EmitMode::OnWindowClose),
            ("EMIT ON WATERMARK", EmitMode::OnWindowClose),
            ("EMIT FINAL", EmitMode::Final),
            ("EMIT ON UPDATE", EmitMode::OnUpdate),
            ("EMIT CHANGES", EmitMode::Changes),
            ("EMIT EVERY INTERVAL '2' SECOND", EmitMode::Every(Duration::from_secs(2))),
        ] {
            let s = parse_one(&format!("CREATE STREAM x AS SELECT a FROM t {sql}")).unwrap();
            let Statement::CreateStream(cs) = s.statement else { panic!() };
            assert_eq!(cs.emit, Some(mode), "{sql}");
        }
    }

    #[test]
    fn window_tvf_table_descriptor_form_is_rewritten() {
        let s = parse_one(
            "SELECT window_start, COUNT(*) FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), \
             INTERVAL '2' SECOND, INTERVAL '10' SECOND)) GROUP BY window_start, window_end",
        )
        .unwrap();
        let Statement::Query(q) = s.statement else { panic!() };
        assert!(q.to_string().contains("FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND)"), "{q}");
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let e = parse_one("SELECT a\n  FROM t WHERE (").unwrap_err();
        assert_eq!(e.kind(), crate::error::ErrorKind::SqlSyntax);
        assert_eq!(e.position().map(|p| p.line), Some(2), "{e}");
        let e = parse_one("CREATE SOURCE s (a INT) GARBAGE").unwrap_err();
        assert_eq!(e.position().map(|p| (p.line, p.column)), Some((1, 25)), "{e}");
    }

    #[test]
    fn statements_split_on_semicolons_and_keep_text() {
        let v = parse_sql("SHOW SOURCES; DROP STREAM IF EXISTS a, b CASCADE;").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].text, "DROP STREAM IF EXISTS a, b CASCADE");
        assert!(
            matches!(&v[1].statement, Statement::Drop { names, if_exists: true, cascade: true, .. } if names.len() == 2)
        );
    }

    #[test]
    fn intervals() {
        let p = |s: &str| {
            let (v, _) = parse_interval_at(
                &{
                    let d = GenericDialect {};
                    Tokenizer::new(&d, s)
                        .tokenize_with_location()
                        .unwrap()
                        .into_iter()
                        .filter(|t| !matches!(t.token, Token::Whitespace(_)))
                        .collect::<Vec<_>>()
                },
                0,
            )
            .unwrap();
            v
        };
        assert_eq!(p("INTERVAL '1' MINUTE"), 60_000_000);
        assert_eq!(p("INTERVAL '1 minute 30 seconds'"), 90_000_000);
        assert_eq!(p("INTERVAL '250' MILLISECOND"), 250_000);
        assert_eq!(p("'5s'"), 5_000_000);
    }
}

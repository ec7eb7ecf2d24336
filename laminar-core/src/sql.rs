//! The SQL front end: splits text into statements, recognises LaminarDB's own statements and
//! streaming clauses (WATERMARK, EMIT, ALLOW LATENESS, LATE DATA TO, window TVFs), and hands the
//! standard parts to sqlparser. Everything here is text → AST; planning lives in `plan`.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{self, Expr as SqlExpr, Query};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Tokenizer, Word};

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
    Describe(String),
    ShowCreate(String),
    Explain(Box<Statement>),
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

/// The deepest expression a statement may hold: operators in one chain (`a + b + …`, `x OR y OR
/// …`, `UNION ALL …`, joins) plus the parentheses around them. Parsing, planning, optimising,
/// evaluating and even dropping such a tree recurse once per level, so an unbounded chain would
/// overflow the stack of whichever thread touches it (2 MiB for a spawned thread) and kill the
/// host process. Generated `IN (…)` lists and `VALUES` rows are flat lists, not chains, and are
/// not limited by this.
pub const MAX_EXPR_DEPTH: usize = 512;

/// The most `NOT`s (or unary signs) in a row: sqlparser nests once per prefix operator and stops
/// at its own recursion limit of 50 with a misleading message.
const MAX_PREFIX_RUN: usize = 40;

/// Refuses a statement whose expression tree could be deeper than [`MAX_EXPR_DEPTH`], before
/// any parser builds it. An upper bound from the tokens alone: within each parenthesis level,
/// the operators since the last comma or clause keyword, summed over the enclosing levels, plus
/// the nesting itself.
fn check_depth(toks: &[TokenWithSpan]) -> Result<()> {
    use datafusion::sql::sqlparser::keywords::Keyword;
    // (operators since the last separator, set operations and joins at this level)
    let mut levels: Vec<(usize, usize)> = vec![(0, 0)];
    let mut outer = 0usize; // the sum over all but the innermost level, plus the nesting
    let mut prefix_run = 0usize; // NOT / unary signs in a row: the parser recurses on each
    for t in toks {
        let prefix = matches!(&t.token, Token::Word(w) if w.quote_style.is_none() && w.keyword == Keyword::NOT)
            || (prefix_run > 0 && matches!(t.token, Token::Minus | Token::Plus));
        prefix_run = if prefix { prefix_run + 1 } else { 0 };
        if prefix_run > MAX_PREFIX_RUN {
            return Err(Error::syntax(format!(
                "more than {MAX_PREFIX_RUN} NOT (or signs) in a row: the parser nests once for each; write the expression with fewer"
            ))
            .with_position(pos_of(t)));
        }
        let (is_op, is_structural, resets) = match &t.token {
            Token::Plus
            | Token::Minus
            | Token::Mul
            | Token::Div
            | Token::Mod
            | Token::DuckIntDiv
            | Token::StringConcat
            | Token::Eq
            | Token::DoubleEq
            | Token::Neq
            | Token::Lt
            | Token::Gt
            | Token::LtEq
            | Token::GtEq
            | Token::Spaceship
            | Token::Caret
            | Token::Ampersand
            | Token::Pipe
            | Token::Tilde
            | Token::ShiftLeft
            | Token::ShiftRight
            | Token::DoubleColon
            | Token::Arrow
            | Token::LongArrow
            | Token::HashArrow
            | Token::HashLongArrow
            | Token::ExclamationMark => (true, false, false),
            Token::Comma => (false, false, true),
            Token::Word(w) if w.quote_style.is_none() => match w.keyword {
                Keyword::AND
                | Keyword::OR
                | Keyword::XOR
                | Keyword::NOT
                | Keyword::IS
                | Keyword::LIKE
                | Keyword::ILIKE
                | Keyword::BETWEEN
                | Keyword::IN
                | Keyword::COLLATE
                | Keyword::AT
                | Keyword::SIMILAR
                | Keyword::RLIKE
                | Keyword::REGEXP => (true, false, false),
                Keyword::UNION | Keyword::INTERSECT | Keyword::EXCEPT | Keyword::JOIN => (false, true, false),
                Keyword::SELECT
                | Keyword::FROM
                | Keyword::WHERE
                | Keyword::GROUP
                | Keyword::HAVING
                | Keyword::ORDER
                | Keyword::LIMIT
                | Keyword::OFFSET
                | Keyword::WHEN
                | Keyword::THEN
                | Keyword::ELSE
                | Keyword::END
                | Keyword::ON
                | Keyword::USING
                | Keyword::VALUES
                | Keyword::SET
                | Keyword::QUALIFY
                | Keyword::WINDOW => (false, false, true),
                _ => (false, false, false),
            },
            Token::LParen => {
                let (ops, structural) = *levels.last().expect("never empty");
                outer += ops + structural + 1;
                levels.push((0, 0));
                (false, false, false)
            }
            Token::RParen => {
                if levels.len() > 1 {
                    levels.pop();
                    let (ops, structural) = *levels.last().expect("never empty");
                    outer -= ops + structural + 1;
                }
                (false, false, false)
            }
            _ => (false, false, false),
        };
        let level = levels.last_mut().expect("never empty");
        if resets {
            level.0 = 0;
        }
        level.0 += usize::from(is_op);
        level.1 += usize::from(is_structural);
        if outer + level.0 + level.1 > MAX_EXPR_DEPTH {
            return Err(Error::syntax(format!(
                "statement too deeply nested: more than {MAX_EXPR_DEPTH} operators chained in one expression (or \
                 UNION/JOIN chained, or parentheses nested); split it, e.g. with an IN (…) list or intermediate streams"
            ))
            .with_position(pos_of(t)));
        }
    }
    Ok(())
}

/// A token as SQL text that reads back as the same token. sqlparser's Display writes a quoted
/// identifier's (unescaped) value between quotes as is, so `"a"" b"` would come back as two
/// tokens; the closing quote is doubled here.
fn token_sql(t: &Token) -> String {
    match t {
        Token::Word(w) => match w.quote_style {
            Some(q) => {
                let close = match q {
                    '[' => ']',
                    c => c,
                };
                format!("{q}{}{close}", w.value.replace(close, &format!("{close}{close}")))
            }
            None => w.value.clone(),
        },
        other => other.to_string(),
    }
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

/// An end-of-input token positioned just after `toks`, so "found: EOF" errors have a position.
fn eof_after(toks: &[TokenWithSpan]) -> TokenWithSpan {
    let end = toks
        .iter()
        .rev()
        .find(|t| t.token != Token::EOF)
        .map(|t| t.span.end)
        .unwrap_or(datafusion::sql::sqlparser::tokenizer::Location { line: 0, column: 0 });
    TokenWithSpan::new(Token::EOF, datafusion::sql::sqlparser::tokenizer::Span::new(end, end))
}

fn pos_of(t: &TokenWithSpan) -> Option<SqlPosition> {
    (t.span.start.line > 0).then_some(SqlPosition { line: t.span.start.line, column: t.span.start.column })
}

fn word_is(t: &TokenWithSpan, w: &str) -> bool {
    matches!(&t.token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(w))
}

/// A cursor over whitespace-free tokens for LaminarDB's own grammar.
struct Cursor {
    toks: Vec<TokenWithSpan>,
    pos: usize,
}

impl Cursor {
    fn peek(&self) -> Option<&TokenWithSpan> {
        self.toks.get(self.pos)
    }
    fn peek_kw(&self, w: &str) -> bool {
        self.peek().is_some_and(|t| word_is(t, w))
    }
    fn peek_kws(&self, ws: &[&str]) -> bool {
        ws.iter().enumerate().all(|(i, w)| self.toks.get(self.pos + i).is_some_and(|t| word_is(t, w)))
    }
    fn eat_kw(&mut self, w: &str) -> bool {
        if self.peek_kw(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn eat_kws(&mut self, ws: &[&str]) -> bool {
        if self.peek_kws(ws) {
            self.pos += ws.len();
            true
        } else {
            false
        }
    }
    fn error_here(&self, msg: impl Into<String>) -> Error {
        let pos = self.peek().or(self.toks.last()).and_then(pos_of);
        Error::syntax(msg).with_position(pos)
    }
    fn expect_kw(&mut self, w: &str) -> Result<()> {
        if self.eat_kw(w) {
            Ok(())
        } else {
            let found = self.peek().map(|t| t.token.to_string()).unwrap_or_else(|| "end of input".into());
            Err(self.error_here(format!("expected {w}, found {found}")))
        }
    }
    fn ident(&mut self, what: &str) -> Result<String> {
        match self.peek().map(|t| t.token.clone()) {
            Some(Token::Word(w)) => {
                self.pos += 1;
                Ok(normalize_ident(&w.value, w.quote_style.is_some()))
            }
            other => Err(self.error_here(format!(
                "expected {what}, found {}",
                other.map(|t| t.to_string()).unwrap_or_else(|| "end of input".into())
            ))),
        }
    }
    fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }
    fn rest(&self) -> Vec<TokenWithSpan> {
        self.toks[self.pos..].to_vec()
    }
    /// Index of the token closing the parenthesis opened at `open`.
    fn matching_paren(&self, open: usize) -> Result<usize> {
        let mut depth = 0;
        for (i, t) in self.toks.iter().enumerate().skip(open) {
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen => {
                    depth -= 1;
                    if depth == 0 {
                        return Ok(i);
                    }
                }
                _ => {}
            }
        }
        Err(Error::syntax("unbalanced parentheses").with_position(pos_of(&self.toks[open])))
    }
}

/// Unquoted identifiers are case-insensitive (lower-cased), as in DataFusion.
pub fn normalize_ident(s: &str, quoted: bool) -> String {
    if quoted { s.to_string() } else { s.to_lowercase() }
}

fn parser_for(tokens: Vec<TokenWithSpan>) -> Parser<'static> {
    static DIALECT: GenericDialect = GenericDialect {};
    Parser::new(&DIALECT).with_tokens_with_locations(tokens)
}

fn finish_parser(p: &mut Parser<'_>) -> Result<()> {
    let t = p.peek_token();
    if t.token != Token::EOF {
        return Err(
            Error::syntax(format!("unexpected '{}' after the end of the statement", t.token)).with_position(pos_of(&t))
        );
    }
    Ok(())
}

fn parse_query_tokens(tokens: Vec<TokenWithSpan>) -> Result<Box<Query>> {
    let tokens = rewrite_window_tvfs(tokens)?;
    let tokens = rewrite_system_time(tokens)?;
    let mut p = parser_for(tokens);
    let q = p.parse_query().map_err(|e| Error::from_parser(&e))?;
    finish_parser(&mut p)?;
    Ok(q)
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
            return Err(
                c.error_here("expected SOURCES, STREAMS, MATERIALIZED VIEWS, TABLES, SINKS or CREATE after SHOW")
            );
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

fn parse_create_sink(c: &mut Cursor, or_replace: bool) -> Result<CreateSink> {
    let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
    let name = c.ident("a sink name")?;
    if !c.eat_kw("FROM") {
        return Err(c.error_here("expected FROM <stream, materialized view or table> after the sink name"));
    }
    let input = c.ident("the name of the stream, materialized view or table the sink writes")?;
    if !c.eat_kw("INTO") {
        return Err(c.error_here("expected INTO <connector> (e.g. INTO FILES) after the sink's input"));
    }
    let connector = c.ident("a connector name")?;
    let mut options = BTreeMap::new();
    if c.eat_kw("WITH") {
        options = parse_options(c)?;
    }
    if !c.at_end() {
        return Err(c.error_here("unexpected text after the sink definition"));
    }
    Ok(CreateSink { name, or_replace, if_not_exists, input, connector, options })
}

fn parse_create_source(c: &mut Cursor, or_replace: bool, table: bool) -> Result<CreateSource> {
    let what = if table { "table" } else { "source" };
    let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
    let name = c.ident(if table { "a table name" } else { "a source name" })?;
    if c.peek().is_none_or(|t| t.token != Token::LParen) {
        return Err(c.error_here("expected '(' and the column list of the source"));
    }
    let open = c.pos;
    let close = c.matching_paren(open)?;
    // Split the column list at depth-1 commas; take WATERMARK elements out.
    let mut elems: Vec<Vec<TokenWithSpan>> = vec![vec![]];
    let mut depth = 0;
    for t in &c.toks[open + 1..close] {
        match t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Comma if depth == 0 => {
                elems.push(vec![]);
                continue;
            }
            _ => {}
        }
        elems.last_mut().unwrap().push(t.clone());
    }
    let mut watermark = None;
    let mut column_tokens: Vec<String> = Vec::new();
    let mut primary_key: Vec<String> = vec![];
    for mut e in elems {
        let pk_at = e.windows(2).position(|w| word_is(&w[0], "PRIMARY") && word_is(&w[1], "KEY"));
        if let Some(at) = pk_at {
            if !table {
                return Err(Error::plan(
                    "a source is append-only and has no PRIMARY KEY; use CREATE TABLE for a keyed, upserted relation",
                )
                .with_position(pos_of(&e[at])));
            }
            if !primary_key.is_empty() {
                return Err(Error::syntax("a table has one PRIMARY KEY").with_position(pos_of(&e[at])));
            }
            if at == 0 {
                // PRIMARY KEY (a, b)
                for t in &e[2..] {
                    match &t.token {
                        Token::Word(w) => primary_key.push(normalize_ident(&w.value, w.quote_style.is_some())),
                        Token::LParen | Token::RParen | Token::Comma | Token::Whitespace(_) => {}
                        other => {
                            return Err(
                                Error::syntax(format!("unexpected '{other}' in PRIMARY KEY")).with_position(pos_of(t))
                            );
                        }
                    }
                }
                if primary_key.is_empty() {
                    return Err(Error::syntax("PRIMARY KEY needs its columns").with_position(pos_of(&e[0])));
                }
                continue;
            }
            // k BIGINT PRIMARY KEY
            match &e.iter().find(|t| !matches!(t.token, Token::Whitespace(_))).map(|t| t.token.clone()) {
                Some(Token::Word(w)) => primary_key.push(normalize_ident(&w.value, w.quote_style.is_some())),
                _ => return Err(Error::syntax("PRIMARY KEY follows a column").with_position(pos_of(&e[at]))),
            }
            e.drain(at..at + 2);
        }
        if e.first().is_some_and(|t| word_is(t, "WATERMARK")) {
            if watermark.is_some() {
                return Err(Error::syntax(format!("a {what} has at most one WATERMARK")).with_position(pos_of(&e[0])));
            }
            watermark = Some(parse_watermark(&e)?);
        } else if e.is_empty() {
            return Err(Error::syntax("empty element in the column list").with_position(pos_of(&c.toks[open])));
        } else {
            column_tokens.push(e.iter().map(|t| token_sql(&t.token)).collect::<Vec<_>>().join(" "));
        }
    }
    if column_tokens.is_empty() {
        return Err(Error::syntax(format!("a {what} needs at least one column")).with_position(pos_of(&c.toks[open])));
    }
    if table && primary_key.is_empty() {
        return Err(Error::plan("a table needs a PRIMARY KEY (k, …): rows with the same key replace each other")
            .with_position(pos_of(&c.toks[open])));
    }
    c.pos = close + 1;
    let mut connector = None;
    if c.eat_kw("FROM") {
        let kind = c.ident("a connector name")?;
        connector = Some(kind);
        if c.peek().is_some_and(|t| t.token == Token::LParen) {
            c.pos = c.matching_paren(c.pos)? + 1;
        }
    }
    let mut options = BTreeMap::new();
    if c.eat_kw("WITH") {
        options = parse_options(c)?;
    }
    if !c.at_end() {
        return Err(c.error_here(format!("unexpected text after the {what} definition")));
    }
    if table && connector.is_some() {
        return Err(Error::not_implemented("a table fed by a connector (CDC) is not available in this build"));
    }
    Ok(CreateSource {
        primary_key,
        table,
        name,
        or_replace,
        if_not_exists,
        columns_sql: format!("({})", column_tokens.join(", ")),
        watermark,
        options,
        connector,
    })
}

/// `( key = 'value', … )`
fn parse_options(c: &mut Cursor) -> Result<BTreeMap<String, String>> {
    if c.peek().is_none_or(|t| t.token != Token::LParen) {
        return Err(c.error_here("expected '(' after WITH"));
    }
    let close = c.matching_paren(c.pos)?;
    c.pos += 1;
    let mut out = BTreeMap::new();
    while c.pos < close {
        // `'scan.startup.mode' = …` (Flink's quoting), `path = …`, or dotted words.
        let mut key = match c.peek().map(|t| t.token.clone()) {
            Some(Token::SingleQuotedString(s)) => {
                c.pos += 1;
                s
            }
            _ => c.ident("an option name")?,
        };
        while c.peek().is_some_and(|t| t.token == Token::Period) {
            c.pos += 1;
            key = format!("{key}.{}", c.ident("an option name after '.'")?);
        }
        if c.peek().is_some_and(|t| t.token == Token::Eq) {
            c.pos += 1;
        } else {
            return Err(c.error_here("expected '=' after the option name"));
        }
        let value = match c.peek().map(|t| t.token.clone()) {
            Some(Token::SingleQuotedString(s)) | Some(Token::DoubleQuotedString(s)) => s,
            Some(Token::Number(n, _)) => n,
            Some(Token::Word(w)) => w.value,
            _ => return Err(c.error_here("expected an option value")),
        };
        c.pos += 1;
        out.insert(key, value);
        if c.peek().is_some_and(|t| t.token == Token::Comma) {
            c.pos += 1;
        }
    }
    c.pos = close + 1;
    Ok(out)
}

fn parse_watermark(e: &[TokenWithSpan]) -> Result<WatermarkDecl> {
    let mut c = Cursor { toks: e.to_vec(), pos: 1 };
    c.expect_kw("FOR")?;
    let column = c.ident("the event-time column")?;
    if c.at_end() {
        return Ok(WatermarkDecl { column, delay: WatermarkDelay::None });
    }
    c.expect_kw("AS")?;
    let mut toks = c.rest();
    toks.push(TokenWithSpan::wrap(Token::EOF));
    let mut p = parser_for(toks);
    let expr = p.parse_expr().map_err(|e| Error::from_parser(&e))?;
    finish_parser(&mut p)?;
    let bad = || {
        Error::syntax(format!(
            "WATERMARK FOR {column} AS …: expected '{column}' or '{column} - <delay>' (an INTERVAL for TIMESTAMP, milliseconds for BIGINT), got '{expr}'"
        ))
        .with_position(pos_of(&e[0]))
    };
    let is_col = |x: &SqlExpr| matches!(x, SqlExpr::Identifier(i) if normalize_ident(&i.value, i.quote_style.is_some()) == column);
    match &expr {
        x if is_col(x) => Ok(WatermarkDecl { column, delay: WatermarkDelay::None }),
        SqlExpr::BinaryOp { left, op: ast::BinaryOperator::Minus, right } if is_col(left) => {
            let delay = match right.as_ref() {
                SqlExpr::Interval(iv) => WatermarkDelay::IntervalMicros(interval_micros(iv)?),
                SqlExpr::Value(v) => match &v.value {
                    ast::Value::Number(n, _) => WatermarkDelay::Integer(n.parse().map_err(|_| bad())?),
                    _ => return Err(bad()),
                },
                _ => return Err(bad()),
            };
            Ok(WatermarkDecl { column, delay })
        }
        _ => Err(bad()),
    }
}

fn parse_create_stream(c: &mut Cursor, or_replace: bool, materialized: bool) -> Result<CreateStream> {
    let if_not_exists = c.eat_kws(&["IF", "NOT", "EXISTS"]);
    let name = c.ident("a name")?;
    c.expect_kw("AS")?;
    // Take the streaming clauses out wherever they stand at the top level.
    let mut rest = c.rest();
    let mut emit = None;
    let mut allowed_lateness = None;
    let mut late_data_to = None;
    let mut state_ttl = None;
    let mut i = 0;
    let mut depth = 0;
    while i < rest.len() {
        match rest[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            _ => {}
        }
        if depth != 0 {
            i += 1;
            continue;
        }
        let clause_start = i;
        let mut sub = Cursor { toks: rest.clone(), pos: i };
        if sub.eat_kw("EMIT") {
            if emit.is_some() {
                return Err(sub.error_here("EMIT given twice"));
            }
            emit = Some(
                if sub.eat_kws(&["ON", "WINDOW", "CLOSE"])
                    || sub.eat_kws(&["AFTER", "WATERMARK"])
                    || sub.eat_kws(&["ON", "WATERMARK"])
                {
                    EmitMode::OnWindowClose
                } else if sub.eat_kw("FINAL") {
                    EmitMode::Final
                } else if sub.eat_kws(&["ON", "UPDATE"]) {
                    EmitMode::OnUpdate
                } else if sub.eat_kw("CHANGES") {
                    EmitMode::Changes
                } else if sub.eat_kw("EVERY") {
                    let (d, next) = parse_interval_at(&rest, sub.pos)?;
                    sub.pos = next;
                    if d <= 0 {
                        return Err(Error::syntax("EMIT EVERY needs a positive interval")
                            .with_position(pos_of(&rest[clause_start])));
                    }
                    EmitMode::Every(Duration::from_micros(d as u64))
                } else {
                    return Err(sub.error_here(
                    "expected ON WINDOW CLOSE, AFTER WATERMARK, ON WATERMARK, FINAL, ON UPDATE, CHANGES or EVERY after EMIT",
                ));
                },
            );
        } else if sub.eat_kws(&["ALLOW", "LATENESS"]) {
            let (d, next) = parse_interval_at(&rest, sub.pos)?;
            sub.pos = next;
            if d < 0 {
                return Err(
                    Error::syntax("ALLOW LATENESS cannot be negative").with_position(pos_of(&rest[clause_start]))
                );
            }
            allowed_lateness = Some(Duration::from_micros(d as u64));
        } else if sub.eat_kws(&["LATE", "DATA", "TO"]) {
            late_data_to = Some(sub.ident("a stream name")?);
        } else if sub.eat_kws(&["STATE", "TTL"]) {
            let (d, next) = parse_interval_at(&rest, sub.pos)?;
            sub.pos = next;
            if d <= 0 {
                return Err(
                    Error::syntax("STATE TTL needs a positive interval").with_position(pos_of(&rest[clause_start]))
                );
            }
            state_ttl = Some(Duration::from_micros(d as u64));
        } else {
            i += 1;
            continue;
        }
        rest.drain(clause_start..sub.pos);
        i = clause_start;
    }
    let eof = eof_after(&rest);
    rest.push(eof);
    let query = parse_query_tokens(rest)?;
    Ok(CreateStream {
        name,
        materialized,
        or_replace,
        if_not_exists,
        query,
        emit,
        allowed_lateness,
        late_data_to,
        state_ttl,
    })
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

/// Rewrites `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), …))` into `TUMBLE(t, ts, …)` (and HOP,
/// CUMULATE, SESSION likewise) so sqlparser sees an ordinary table function.
fn rewrite_window_tvfs(mut toks: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>> {
    let is_window_fn = |t: &TokenWithSpan| ["TUMBLE", "HOP", "SESSION", "CUMULATE"].iter().any(|w| word_is(t, w));
    let mut i = 0;
    while i + 3 < toks.len() {
        if word_is(&toks[i], "TABLE")
            && toks[i + 1].token == Token::LParen
            && is_window_fn(&toks[i + 2])
            && toks[i + 3].token == Token::LParen
        {
            let c = Cursor { toks: toks.clone(), pos: 0 };
            let outer_close = c.matching_paren(i + 1)?;
            // Remove outer `TABLE (` … `)`.
            toks.remove(outer_close);
            toks.drain(i..i + 2);
            // Inside the function: drop `TABLE` before the relation, unwrap DESCRIPTOR(col).
            let fn_open = i + 1;
            let c = Cursor { toks: toks.clone(), pos: 0 };
            let fn_close = c.matching_paren(fn_open)?;
            let mut j = fn_open + 1;
            let mut end = fn_close;
            while j < end {
                if word_is(&toks[j], "TABLE") && j == fn_open + 1 {
                    toks.remove(j);
                    end -= 1;
                    continue;
                }
                if word_is(&toks[j], "DESCRIPTOR") && toks.get(j + 1).is_some_and(|t| t.token == Token::LParen) {
                    let c = Cursor { toks: toks.clone(), pos: 0 };
                    let close = c.matching_paren(j + 1)?;
                    toks.remove(close);
                    toks.drain(j..j + 2);
                    end -= 3;
                    continue;
                }
                j += 1;
            }
        }
        i += 1;
    }
    if toks.last().is_none_or(|t| t.token != Token::EOF) {
        let eof = eof_after(&toks);
        toks.push(eof);
    }
    Ok(toks)
}

/// `t FOR SYSTEM_TIME AS OF expr` (temporal and lookup joins) becomes the table function call
/// `__laminar_temporal(t, expr)`, which the generic SQL dialect parses; the planner turns it back.
fn rewrite_system_time(mut toks: Vec<TokenWithSpan>) -> Result<Vec<TokenWithSpan>> {
    const STOP: [&str; 17] = [
        "AS", "ON", "JOIN", "WHERE", "LEFT", "RIGHT", "INNER", "FULL", "CROSS", "GROUP", "ORDER", "LIMIT", "UNION",
        "ASOF", "HAVING", "EMIT", "USING",
    ];
    let mut i = 1;
    while i + 4 < toks.len() {
        if !(word_is(&toks[i], "FOR")
            && word_is(&toks[i + 1], "SYSTEM_TIME")
            && word_is(&toks[i + 2], "AS")
            && word_is(&toks[i + 3], "OF"))
        {
            i += 1;
            continue;
        }
        // The table name before it (possibly qualified).
        let mut start = i;
        while start > 0 && (matches!(toks[start - 1].token, Token::Word(_)) || toks[start - 1].token == Token::Period) {
            start -= 1;
            if matches!(toks[start].token, Token::Word(_)) && (start == 0 || toks[start - 1].token != Token::Period) {
                break;
            }
        }
        if start == i {
            return Err(Error::syntax("FOR SYSTEM_TIME AS OF follows a table name").with_position(pos_of(&toks[i])));
        }
        // The time expression after it, up to the alias, ON, the next join or the end.
        let mut end = i + 4;
        let mut depth = 0i32;
        while end < toks.len() {
            let t = &toks[end];
            match t.token {
                Token::LParen => depth += 1,
                Token::RParen if depth == 0 => break,
                Token::RParen => depth -= 1,
                Token::Comma | Token::SemiColon | Token::EOF if depth == 0 => break,
                _ if depth == 0 && STOP.iter().any(|w| word_is(t, w)) => break,
                _ => {}
            }
            end += 1;
        }
        if end == i + 4 {
            return Err(Error::syntax("FOR SYSTEM_TIME AS OF needs a time: the left row's event time, or PROCTIME()")
                .with_position(pos_of(&toks[i])));
        }
        let w = |s: &str| TokenWithSpan::wrap(Token::make_word(s, None));
        let mut new: Vec<TokenWithSpan> = vec![w("__laminar_temporal"), TokenWithSpan::wrap(Token::LParen)];
        new.extend(toks[start..i].iter().cloned());
        new.push(TokenWithSpan::wrap(Token::Comma));
        new.extend(toks[i + 4..end].iter().cloned());
        new.push(TokenWithSpan::wrap(Token::RParen));
        let n = new.len();
        toks.splice(start..end, new);
        i = start + n;
    }
    Ok(toks)
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

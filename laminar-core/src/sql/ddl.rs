//! Parsing of the statements that create catalog objects: CREATE SOURCE and CREATE TABLE (column
//! list, WATERMARK, PRIMARY KEY, FROM connector, WITH options), CREATE STREAM and CREATE
//! MATERIALIZED VIEW (the streaming clauses EMIT, ALLOW LATENESS, LATE DATA TO and STATE TTL taken
//! out of the query wherever they stand at its top level), and CREATE SINK.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::sql::sqlparser::ast::{self, Expr as SqlExpr};
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::tokens::{Cursor, eof_after, finish_parser, parse_query_tokens, parser_for, pos_of, token_sql, word_is};
use super::{
    CreateSink, CreateSource, CreateStream, EmitMode, WatermarkDecl, WatermarkDelay, interval_micros, normalize_ident,
    parse_interval_at,
};
use crate::error::{Error, Result};

pub(super) fn parse_create_sink(c: &mut Cursor, or_replace: bool) -> Result<CreateSink> {
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

pub(super) fn parse_create_source(c: &mut Cursor, or_replace: bool, table: bool) -> Result<CreateSource> {
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
            // Brackets too: `timestamp[us, tz=UTC]` is one type.
            Token::LParen | Token::LBracket => depth += 1,
            Token::RParen | Token::RBracket => depth -= 1,
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
            let parts: Vec<String> =
                e.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).map(|t| token_sql(&t.token)).collect();
            column_tokens.push(arrow_type_names(parts).join(" "));
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

pub(super) fn parse_create_stream(c: &mut Cursor, or_replace: bool, materialized: bool) -> Result<CreateStream> {
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

/// A column definition (`name type …`, as SQL tokens) with an Arrow type name in place of the
/// type (`int64`, `float64`, `string`, `bool`, `timestamp[ms]`, `timestamp[us, tz=UTC]`,
/// `decimal128(10, 2)` — the names pyarrow prints, which the established Python package takes)
/// rewritten to its SQL type; any other definition as it was. `int8` keeps its SQL meaning
/// (BIGINT, as in PostgreSQL), which SQL already gives it.
pub(crate) fn arrow_type_names(parts: Vec<String>) -> Vec<String> {
    if parts.len() < 2 {
        return parts;
    }
    let ty = parts[1].to_ascii_lowercase();
    let simple = match ty.as_str() {
        "int16" => Some("SMALLINT"),
        "int32" => Some("INT"),
        "int64" => Some("BIGINT"),
        "uint8" => Some("TINYINT UNSIGNED"),
        "uint16" => Some("SMALLINT UNSIGNED"),
        "uint32" => Some("INT UNSIGNED"),
        "uint64" => Some("BIGINT UNSIGNED"),
        "float16" | "float32" | "halffloat" => Some("REAL"),
        "float64" => Some("DOUBLE"),
        "string" | "utf8" | "large_string" | "large_utf8" | "str" => Some("VARCHAR"),
        "bool" => Some("BOOLEAN"),
        "large_binary" => Some("BYTEA"),
        "date32" | "date64" => Some("DATE"),
        _ => None,
    };
    let mut out = vec![parts[0].clone()];
    let rest_at;
    if let Some(t) = simple {
        out.push(t.to_string());
        rest_at = 2;
    } else if ty == "timestamp" && parts.get(2).map(String::as_str) == Some("[") {
        let Some(close) = parts.iter().position(|p| p == "]") else { return parts };
        let inner = parts[3..close].join("").to_ascii_lowercase();
        out.push(if inner.contains("tz=") { "TIMESTAMP WITH TIME ZONE" } else { "TIMESTAMP" }.to_string());
        rest_at = close + 1;
    } else if ty == "decimal128" && parts.get(2).map(String::as_str) == Some("(") {
        let Some(close) = parts.iter().position(|p| p == ")") else { return parts };
        out.push(format!("DECIMAL({})", parts[3..close].join(" ")));
        rest_at = close + 1;
    } else {
        return parts;
    }
    out.extend(parts[rest_at..].iter().cloned());
    out
}

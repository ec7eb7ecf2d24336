//! Token-level machinery of the SQL front end.
//!
//! [`Cursor`] walks the whitespace-free tokens of one statement for LaminarDB's own grammar. The
//! rewrites here turn LaminarDB's syntax that sqlparser's generic dialect does not know into
//! syntax it does, on tokens, before [`parse_query_tokens`] hands a query to sqlparser:
//! `TABLE(TUMBLE(TABLE t, DESCRIPTOR(ts), …))` becomes `TUMBLE(t, ts, …)`, and `t FOR SYSTEM_TIME
//! AS OF expr` becomes `__laminar_temporal(t, expr)`.

use datafusion::sql::sqlparser::ast::Query;
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan, Word};

use super::normalize_ident;
use crate::error::{Error, Result, SqlPosition};

/// A token as SQL text that reads back as the same token. sqlparser's Display writes a quoted
/// identifier's (unescaped) value between quotes as is, so `"a"" b"` would come back as two
/// tokens; the closing quote is doubled here.
pub(super) fn token_sql(t: &Token) -> String {
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

/// An end-of-input token positioned just after `toks`, so "found: EOF" errors have a position.
pub(super) fn eof_after(toks: &[TokenWithSpan]) -> TokenWithSpan {
    let end = toks
        .iter()
        .rev()
        .find(|t| t.token != Token::EOF)
        .map(|t| t.span.end)
        .unwrap_or(datafusion::sql::sqlparser::tokenizer::Location { line: 0, column: 0 });
    TokenWithSpan::new(Token::EOF, datafusion::sql::sqlparser::tokenizer::Span::new(end, end))
}

pub(super) fn pos_of(t: &TokenWithSpan) -> Option<SqlPosition> {
    (t.span.start.line > 0).then_some(SqlPosition { line: t.span.start.line, column: t.span.start.column })
}

pub(super) fn word_is(t: &TokenWithSpan, w: &str) -> bool {
    matches!(&t.token, Token::Word(Word { value, quote_style: None, .. }) if value.eq_ignore_ascii_case(w))
}

/// A cursor over whitespace-free tokens for LaminarDB's own grammar.
pub(super) struct Cursor {
    pub(super) toks: Vec<TokenWithSpan>,
    pub(super) pos: usize,
}

impl Cursor {
    pub(super) fn peek(&self) -> Option<&TokenWithSpan> {
        self.toks.get(self.pos)
    }
    pub(super) fn peek_kw(&self, w: &str) -> bool {
        self.peek().is_some_and(|t| word_is(t, w))
    }
    pub(super) fn peek_kws(&self, ws: &[&str]) -> bool {
        ws.iter().enumerate().all(|(i, w)| self.toks.get(self.pos + i).is_some_and(|t| word_is(t, w)))
    }
    pub(super) fn eat_kw(&mut self, w: &str) -> bool {
        if self.peek_kw(w) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    pub(super) fn eat_kws(&mut self, ws: &[&str]) -> bool {
        if self.peek_kws(ws) {
            self.pos += ws.len();
            true
        } else {
            false
        }
    }
    pub(super) fn error_here(&self, msg: impl Into<String>) -> Error {
        let pos = self.peek().or(self.toks.last()).and_then(pos_of);
        Error::syntax(msg).with_position(pos)
    }
    pub(super) fn expect_kw(&mut self, w: &str) -> Result<()> {
        if self.eat_kw(w) {
            Ok(())
        } else {
            let found = self.peek().map(|t| t.token.to_string()).unwrap_or_else(|| "end of input".into());
            Err(self.error_here(format!("expected {w}, found {found}")))
        }
    }
    pub(super) fn ident(&mut self, what: &str) -> Result<String> {
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
    pub(super) fn at_end(&self) -> bool {
        self.pos >= self.toks.len()
    }
    pub(super) fn rest(&self) -> Vec<TokenWithSpan> {
        self.toks[self.pos..].to_vec()
    }
    /// Index of the token closing the parenthesis opened at `open`.
    pub(super) fn matching_paren(&self, open: usize) -> Result<usize> {
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

pub(super) fn parser_for(tokens: Vec<TokenWithSpan>) -> Parser<'static> {
    static DIALECT: GenericDialect = GenericDialect {};
    Parser::new(&DIALECT).with_tokens_with_locations(tokens)
}

pub(super) fn finish_parser(p: &mut Parser<'_>) -> Result<()> {
    let t = p.peek_token();
    if t.token != Token::EOF {
        return Err(
            Error::syntax(format!("unexpected '{}' after the end of the statement", t.token)).with_position(pos_of(&t))
        );
    }
    Ok(())
}

pub(super) fn parse_query_tokens(tokens: Vec<TokenWithSpan>) -> Result<Box<Query>> {
    let tokens = rewrite_window_tvfs(tokens)?;
    let tokens = rewrite_system_time(tokens)?;
    let mut p = parser_for(tokens);
    let q = p.parse_query().map_err(|e| Error::from_parser(&e))?;
    finish_parser(&mut p)?;
    Ok(q)
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

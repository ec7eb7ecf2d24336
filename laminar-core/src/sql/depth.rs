//! The nesting limit of a statement, checked on its tokens before any parser builds a tree.

use datafusion::sql::sqlparser::tokenizer::{Token, TokenWithSpan};

use super::tokens::pos_of;
use crate::error::{Error, Result};

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
pub(super) fn check_depth(toks: &[TokenWithSpan]) -> Result<()> {
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

//! One error type for the whole engine. Its [`ErrorKind`] is the coarse, stable classification the
//! C ABI exposes as `laminar_status`; the message carries the detail a person needs.

use std::fmt;

/// The coarse classification of an [`Error`]. The numeric values are the C ABI status codes and
/// are append-only (see STYLE B4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ErrorKind {
    Unknown = 1,
    NotImplemented = 2,
    NotFound = 3,
    AlreadyExists = 4,
    InvalidArgument = 5,
    InvalidState = 6,
    /// A pushed batch or row does not match the schema (names the column and both types).
    InvalidData = 7,
    /// A bug in LaminarDB, including a caught panic.
    Internal = 9,
    Io = 10,
    Cancelled = 11,
    Timeout = 12,
    /// A resource limit was hit (memory_limit, a subscription that lagged behind).
    ResourceExhausted = 13,
    Closed = 20,
    SqlSyntax = 21,
    Plan = 22,
}

impl ErrorKind {
    /// The stable upper-case name used by every binding (`NOT_FOUND`, `SQL_SYNTAX`, …).
    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Unknown => "UNKNOWN",
            ErrorKind::NotImplemented => "NOT_IMPLEMENTED",
            ErrorKind::NotFound => "NOT_FOUND",
            ErrorKind::AlreadyExists => "ALREADY_EXISTS",
            ErrorKind::InvalidArgument => "INVALID_ARGUMENT",
            ErrorKind::InvalidState => "INVALID_STATE",
            ErrorKind::InvalidData => "INVALID_DATA",
            ErrorKind::Internal => "INTERNAL",
            ErrorKind::Io => "IO",
            ErrorKind::Cancelled => "CANCELLED",
            ErrorKind::Timeout => "TIMEOUT",
            ErrorKind::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorKind::Closed => "CLOSED",
            ErrorKind::SqlSyntax => "SQL_SYNTAX",
            ErrorKind::Plan => "PLAN",
        }
    }

    /// The kind a [`ErrorKind::name`] names.
    pub fn from_name(name: &str) -> Option<ErrorKind> {
        use ErrorKind::*;
        [Unknown, NotImplemented, NotFound, AlreadyExists, InvalidArgument, InvalidState, InvalidData, Internal, Io, Cancelled, Timeout, ResourceExhausted, Closed, SqlSyntax, Plan]
            .into_iter()
            .find(|k| k.name() == name)
    }
}

/// A position in SQL text, 1-based like every editor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqlPosition {
    pub line: u64,
    pub column: u64,
}

/// The engine's error: a kind, a message, and for SQL errors the position in the statement.
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    position: Option<SqlPosition>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: message.into(), position: None }
    }
    pub fn with_position(mut self, position: Option<SqlPosition>) -> Self {
        if self.position.is_none() {
            self.position = position;
        }
        self
    }
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    pub fn message(&self) -> &str {
        &self.message
    }
    /// Where in the SQL text the error is, when it comes from a statement.
    pub fn position(&self) -> Option<SqlPosition> {
        self.position
    }
    /// The byte offset of [`Error::position`] in `sql`, the text the statement came from.
    pub fn sql_offset(&self, sql: &str) -> Option<usize> {
        let p = self.position?;
        let mut offset = 0usize;
        for (i, line) in sql.split_inclusive('\n').enumerate() {
            if i as u64 + 1 == p.line {
                let col = p.column.saturating_sub(1) as usize;
                return Some(offset + line.char_indices().nth(col).map(|(b, _)| b).unwrap_or(line.len()));
            }
            offset += line.len();
        }
        None
    }
    /// Adds context in front of the message ("in stream 'x': …").
    pub fn context(mut self, ctx: impl fmt::Display) -> Self {
        self.message = format!("{ctx}: {}", self.message);
        self
    }

    pub fn not_found(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, m)
    }
    pub fn already_exists(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::AlreadyExists, m)
    }
    pub fn invalid_argument(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, m)
    }
    pub fn invalid_state(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidState, m)
    }
    pub fn invalid_data(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidData, m)
    }
    pub fn plan(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Plan, m)
    }
    pub fn syntax(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::SqlSyntax, m)
    }
    pub fn internal(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Internal, m)
    }
    pub fn not_implemented(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotImplemented, m)
    }
    pub fn closed() -> Self {
        Self::new(ErrorKind::Closed, "the database is closed")
    }
    pub fn cancelled(m: impl Into<String>) -> Self {
        Self::new(ErrorKind::Cancelled, m)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(p) = self.position {
            // Keep the position visible even when the message came from elsewhere.
            if !self.message.contains("Line:") {
                write!(f, " (at line {}, column {})", p.line, p.column)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        match e {
            D::SQL(e, _) => Error::from_parser(&e),
            D::Plan(m) => Error::plan(m),
            D::SchemaError(e, _) => Error::plan(e.to_string()),
            D::NotImplemented(m) => Error::not_implemented(m),
            D::ArrowError(e, _) => Error::from(*e),
            D::Context(c, inner) => Error::from(*inner).context(c),
            D::Diagnostic(_, inner) => Error::from(*inner),
            D::Collection(mut v) if !v.is_empty() => Error::from(v.swap_remove(0)),
            D::Shared(inner) => match std::sync::Arc::try_unwrap(inner) {
                Ok(e) => Error::from(e),
                Err(shared) => Error::new(ErrorKind::Unknown, shared.to_string()),
            },
            D::ResourcesExhausted(m) => Error::new(ErrorKind::ResourceExhausted, m),
            D::Execution(m) => Error::new(ErrorKind::InvalidData, m),
            D::IoError(e) => Error::new(ErrorKind::Io, e.to_string()),
            D::Internal(m) => Error::internal(m),
            other => Error::new(ErrorKind::Unknown, other.to_string()),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        use datafusion::arrow::error::ArrowError as A;
        match e {
            A::CastError(m) | A::InvalidArgumentError(m) | A::ComputeError(m) => {
                Error::invalid_data(m)
            }
            A::ArithmeticOverflow(m) => Error::invalid_data(format!("arithmetic overflow: {m}")),
            A::DivideByZero => Error::invalid_data("division by zero"),
            A::MemoryError(m) => Error::new(ErrorKind::ResourceExhausted, m),
            A::IoError(m, _) => Error::new(ErrorKind::Io, m),
            other => Error::internal(other.to_string()),
        }
    }
}

impl Error {
    /// Converts a sqlparser error, keeping the `Line: x, Column: y` it reports as a position.
    pub(crate) fn from_parser(e: &datafusion::sql::sqlparser::parser::ParserError) -> Self {
        let msg = e.to_string();
        let position = parse_position(&msg);
        Error::syntax(msg.trim_start_matches("sql parser error: ").to_string()).with_position(position)
    }
}

/// Finds `Line: N, Column: M` in a message produced by sqlparser.
pub(crate) fn parse_position(msg: &str) -> Option<SqlPosition> {
    let i = msg.find("Line: ")?;
    let rest = &msg[i + 6..];
    let line_end = rest.find(',')?;
    let line = rest[..line_end].trim().parse().ok()?;
    let j = rest.find("Column: ")?;
    let col: String = rest[j + 8..].chars().take_while(|c| c.is_ascii_digit()).collect();
    Some(SqlPosition { line, column: col.parse().ok()? })
}

/// The catalog name closest to `name` (edit distance ≤ 2 or a case-only difference), if any.
pub(crate) fn nearest_name<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let lower = name.to_lowercase();
    candidates
        .map(|c| (levenshtein(&lower, &c.to_lowercase()), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != *cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn position_is_read_from_parser_messages() {
        let p = parse_position("Expected: ), found: x at Line: 3, Column: 17").unwrap();
        assert_eq!((p.line, p.column), (3, 17));
        assert!(parse_position("no position here").is_none());
    }

    #[test]
    fn nearest_name_suggests_close_spellings_only() {
        let names = ["trades", "quotes", "orders"];
        assert_eq!(nearest_name("trade", names.iter().copied()), Some("trades"));
        assert_eq!(nearest_name("QUOTES", names.iter().copied()), Some("quotes"));
        assert_eq!(nearest_name("zzzzzz", names.iter().copied()), None);
    }
}

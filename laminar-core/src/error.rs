//! One error type for the whole engine. Its [`ErrorKind`] is the coarse, stable classification the
//! C ABI exposes as `laminar_status`; the message carries the detail a person needs.

use std::fmt;
use std::sync::Arc;

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
        [
            Unknown,
            NotImplemented,
            NotFound,
            AlreadyExists,
            InvalidArgument,
            InvalidState,
            InvalidData,
            Internal,
            Io,
            Cancelled,
            Timeout,
            ResourceExhausted,
            Closed,
            SqlSyntax,
            Plan,
        ]
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
///
/// Two optional parts are kept for callers that need more than the text: the name of the
/// continuous query (stream or materialized view) whose failure this error reports
/// ([`Error::failed_stream`]), and the underlying DataFusion or Arrow error
/// ([`std::error::Error::source`]; downcast it to `DataFusionError` or `ArrowError`).
#[derive(Debug, Clone)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    position: Option<SqlPosition>,
    failed_stream: Option<String>,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A message longer than 1,000 characters has every quoted ('…') part over 200 characters
    /// clipped (a name or a value echoed back), and is cut at 4,000 characters in any case.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error { kind, message: clip_message(message.into()), position: None, failed_stream: None, source: None }
    }
    /// The same error (kind, position, source, failed stream) with another message.
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = clip_message(message.into());
        self
    }
    /// Marks the error as the failure of the continuous query `name` (see [`Error::failed_stream`]).
    pub fn with_failed_stream(mut self, name: impl Into<String>) -> Self {
        self.failed_stream = Some(name.into());
        self
    }
    /// The name of the stream or materialized view whose failure this error reports: set on the
    /// error a failed stream's subscribers receive, and on every later use of that stream
    /// (subscribing, querying a failed view). The kind stays the original failure's
    /// (`INVALID_DATA` for a division by zero, …); bindings raise their stream error for it.
    pub fn failed_stream(&self) -> Option<&str> {
        self.failed_stream.as_deref()
    }
    /// Keeps `source` as the cause ([`std::error::Error::source`]).
    pub fn with_source(mut self, source: Arc<dyn std::error::Error + Send + Sync>) -> Self {
        self.source = Some(source);
        self
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
        self.message = clip_message(format!("{ctx}: {}", self.message));
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

impl std::error::Error for Error {
    /// The DataFusion or Arrow error this one was made from, when there is one.
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// The failure of a user-defined function written in a host language, carried through DataFusion
/// as `DataFusionError::External`: the message the statement or stream fails with
/// (`INVALID_DATA`), and the host's own error object (a Python exception) for a binding to hand
/// back to its user (found through [`std::error::Error::source`]).
pub struct FunctionError {
    pub message: String,
    pub cause: Box<dyn std::any::Any + Send + Sync>,
}

impl std::fmt::Debug for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionError").field("message", &self.message).finish_non_exhaustive()
    }
}

impl std::fmt::Display for FunctionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FunctionError {}

impl FunctionError {
    /// The user function's failure in `e`, the DataFusion error a statement or stream failed with.
    pub fn find(e: &datafusion::error::DataFusionError) -> Option<&FunctionError> {
        use datafusion::error::DataFusionError as D;
        match e {
            D::External(x) => x.downcast_ref::<FunctionError>(),
            D::Context(_, inner) | D::Diagnostic(_, inner) => FunctionError::find(inner),
            D::Shared(inner) => FunctionError::find(inner),
            D::Collection(v) => v.first().and_then(FunctionError::find),
            _ => None,
        }
    }
}

/// The kind and message of a DataFusion error (its source is attached by the `From` impl).
fn from_datafusion(e: &datafusion::error::DataFusionError) -> Error {
    use datafusion::error::DataFusionError as D;
    match e {
        D::SQL(e, _) => Error::from_parser(e),
        D::Plan(m) => Error::plan(m.clone()),
        D::SchemaError(e, _) => Error::plan(e.to_string()),
        D::NotImplemented(m) => Error::not_implemented(m.clone()),
        D::ArrowError(e, _) => from_arrow(e),
        D::Context(c, inner) => from_datafusion(inner).context(c),
        D::Diagnostic(_, inner) => from_datafusion(inner),
        D::Collection(v) if !v.is_empty() => from_datafusion(&v[0]),
        D::Shared(inner) => from_datafusion(inner),
        D::ResourcesExhausted(m) => Error::new(ErrorKind::ResourceExhausted, m.clone()),
        D::Execution(m) => Error::new(ErrorKind::InvalidData, m.clone()),
        D::IoError(e) => Error::new(ErrorKind::Io, e.to_string()),
        D::Internal(m) => Error::internal(m.clone()),
        D::External(x) if x.is::<FunctionError>() => Error::invalid_data(x.to_string()),
        other => Error::new(ErrorKind::Unknown, other.to_string()),
    }
}

/// The kind and message of an Arrow error.
fn from_arrow(e: &datafusion::arrow::error::ArrowError) -> Error {
    use datafusion::arrow::error::ArrowError as A;
    match e {
        A::CastError(m) | A::InvalidArgumentError(m) | A::ComputeError(m) => Error::invalid_data(m.clone()),
        A::ArithmeticOverflow(m) => Error::invalid_data(format!("arithmetic overflow: {m}")),
        A::DivideByZero => Error::invalid_data("division by zero"),
        A::MemoryError(m) => Error::new(ErrorKind::ResourceExhausted, m.clone()),
        A::IoError(m, _) => Error::new(ErrorKind::Io, m.clone()),
        other => Error::internal(other.to_string()),
    }
}

/// Classifies the DataFusion error and keeps it as the source.
impl From<datafusion::error::DataFusionError> for Error {
    fn from(e: datafusion::error::DataFusionError) -> Self {
        from_datafusion(&e).with_source(Arc::new(e))
    }
}

/// Classifies the Arrow error and keeps it as the source.
impl From<datafusion::arrow::error::ArrowError> for Error {
    fn from(e: datafusion::arrow::error::ArrowError) -> Self {
        from_arrow(&e).with_source(Arc::new(e))
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

/// Names longer than this get no "did you mean": a suggestion costs time proportional to the
/// product of two names' lengths, and no one misspells a name that long.
const SUGGEST_MAX_LEN: usize = 128;

/// The catalog name closest to `name` (edit distance ≤ 2 or a case-only difference), if any.
/// Bounded work: names longer than [`SUGGEST_MAX_LEN`] characters are skipped, and so is every
/// candidate whose length alone puts it out of reach.
pub(crate) fn nearest_name<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    if name.len() > SUGGEST_MAX_LEN * 4 || name.chars().count() > SUGGEST_MAX_LEN {
        return None;
    }
    let lower = name.to_lowercase();
    let len = lower.chars().count();
    candidates
        .filter_map(|c| {
            if c.len() > SUGGEST_MAX_LEN * 4 {
                return None;
            }
            let c_lower = c.to_lowercase();
            let c_len = c_lower.chars().count();
            // Short names get one edit: 'zz' is not a misspelling of 'k'.
            let max = if c_len <= 3 { 1 } else { 2.max(c_len / 4) };
            if c_len > SUGGEST_MAX_LEN || c_len.abs_diff(len) > max {
                return None;
            }
            let d = levenshtein(&lower, &c_lower);
            (d <= max && d < len.max(c_len)).then_some((d, c))
        })
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// `s`, or its first 200 characters and a note of how long it is: for names and values echoed in
/// error messages, which must stay readable and must not copy a user's data into logs wholesale.
pub fn clip(s: &str) -> std::borrow::Cow<'_, str> {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        None => std::borrow::Cow::Borrowed(s),
        Some((i, _)) => std::borrow::Cow::Owned(format!("{}… ({} characters)", &s[..i], s.chars().count())),
    }
}

/// See [`Error::new`].
fn clip_message(m: String) -> String {
    const LONG: usize = 1000;
    const MAX: usize = 4000;
    if m.len() <= LONG {
        return m;
    }
    let mut out = String::with_capacity(LONG);
    let mut parts = m.split('\'');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    // Between quote i and i+1 for odd i: the quoted parts.
    for (i, part) in parts.enumerate() {
        out.push('\'');
        if i % 2 == 0 { out.push_str(&clip(part)) } else { out.push_str(part) }
    }
    match out.char_indices().nth(MAX) {
        None => out,
        Some((i, _)) => format!("{}… (message cut at {MAX} characters)", &out[..i]),
    }
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
        assert_eq!(nearest_name("zz", ["k", "v", "ts"].into_iter()), None);
        assert_eq!(nearest_name("tz", ["k", "v", "ts"].into_iter()), Some("ts"));
    }

    #[test]
    fn nearest_name_is_bounded_for_huge_names() {
        // Unbounded, the first call is 4·10^10 edit steps (minutes: the test binary's time limit
        // fails it); bounded, it is a length check.
        let huge = "x".repeat(200_000);
        let near = format!("{huge}y");
        assert_eq!(nearest_name(&near, [huge.as_str(), "trades"].into_iter()), None);
        assert_eq!(nearest_name("trade", [huge.as_str(), "trades"].into_iter()), Some("trades"));
    }

    #[test]
    fn long_messages_are_clipped() {
        let name = "n".repeat(10_000_000);
        let e = Error::not_found(format!("no source named '{name}'; did you mean 'x'?"));
        assert!(e.message().len() < 400, "{}", e.message().len());
        assert!(
            e.message().starts_with("no source named 'nnn") && e.message().ends_with("characters)'; did you mean 'x'?"),
            "{}",
            e.message()
        );
        let e = Error::invalid_data("v".repeat(100_000));
        assert!(e.message().len() < 4100);
        assert_eq!(Error::plan("short 'quoted' text").message(), "short 'quoted' text");
    }

    #[test]
    fn clip_shortens_long_text_only() {
        assert_eq!(clip("short"), "short");
        let long = "é".repeat(1000);
        let c = clip(&long);
        assert!(c.starts_with(&"é".repeat(200)) && c.ends_with("… (1000 characters)"), "{c}");
    }
}

//! The Delta transaction log, read and written by hand: `_delta_log/<version:020>.json`, one action
//! per line (protocol, metaData, add, remove, txn, commitInfo), replayed in version order. A
//! commit is put in place with `link(2)`, which fails when the version exists, so two writers
//! never both take one version (the local-file-system equivalent of delta-rs's
//! `rename_noreplace`).
//!
//! What is read: JSON commits from version 0. A table whose early commits were cleaned up after
//! a checkpoint (`_last_checkpoint` present, version 0 gone) is refused with a message saying so.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use serde_json::{Value, json};

use crate::error::{Error, Result, clip};

/// A data file of the table, as an `add` action lists it.
#[derive(Debug, Clone)]
pub(super) struct AddFile {
    /// The path relative to the table's directory, decoded (the log holds it as a URI).
    pub path: String,
    pub partition_values: BTreeMap<String, Option<String>>,
    pub data_change: bool,
    /// The file has a deletion vector (rows of it are deleted).
    pub deletion_vector: bool,
    pub size: u64,
}

#[derive(Debug, Clone, Default)]
pub(super) struct Protocol {
    pub min_reader: i64,
    pub min_writer: i64,
    pub reader_features: Vec<String>,
    pub writer_features: Vec<String>,
}

#[derive(Debug, Clone)]
pub(super) struct Metadata {
    pub fields: Vec<DeltaField>,
    pub partition_columns: Vec<String>,
    pub configuration: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
pub(super) struct DeltaField {
    pub name: String,
    /// The Delta type: a name (`long`, `decimal(10,2)`) or a nested type's JSON.
    pub ty: Value,
    pub nullable: bool,
    pub metadata: Value,
}

/// One commit's actions that matter here.
#[derive(Debug)]
pub(super) enum Action {
    Add(AddFile),
    Remove {
        path: String,
        data_change: bool,
    },
    Metadata(Metadata),
    Protocol(Protocol),
    Txn {
        app_id: String,
        version: i64,
    },
    /// The commit's operation (from `commitInfo`), for messages.
    Operation(String),
}

/// The table as of a version: what a reader or writer needs.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    pub version: u64,
    pub protocol: Protocol,
    pub metadata: Metadata,
    /// Live data files by path.
    pub files: BTreeMap<String, AddFile>,
    /// The latest transaction version of each application id.
    pub txns: HashMap<String, i64>,
}

pub(super) fn log_dir(table: &Path) -> PathBuf {
    table.join("_delta_log")
}

fn commit_path(table: &Path, version: u64) -> PathBuf {
    log_dir(table).join(format!("{version:020}.json"))
}

use crate::connector::files::io_error as io;

fn bad(table: &Path, version: u64, m: impl std::fmt::Display) -> Error {
    Error::invalid_data(format!("Delta table '{}', version {version}: {m}", table.display()))
}

/// The actions of commit `version`, or None when there is no such commit (yet).
pub(super) fn read_commit(table: &Path, version: u64) -> Result<Option<Vec<Action>>> {
    let p = commit_path(table, version);
    let text = match fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("cannot read", &p, e)),
    };
    let mut out = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = serde_json::from_str(line).map_err(|e| bad(table, version, format!("line {}: {e}", i + 1)))?;
        if let Some(a) = parse_action(&v).map_err(|m| bad(table, version, format!("line {}: {m}", i + 1)))? {
            out.push(a);
        }
    }
    Ok(Some(out))
}

fn s(v: &Value, k: &str) -> std::result::Result<String, String> {
    v.get(k).and_then(Value::as_str).map(str::to_string).ok_or_else(|| format!("no string '{k}'"))
}

fn parse_action(v: &Value) -> std::result::Result<Option<Action>, String> {
    if let Some(a) = v.get("add") {
        let path = percent_decode(&s(a, "path")?)?;
        let mut partition_values = BTreeMap::new();
        if let Some(Value::Object(m)) = a.get("partitionValues") {
            for (k, v) in m {
                partition_values.insert(k.clone(), v.as_str().map(str::to_string));
            }
        }
        return Ok(Some(Action::Add(AddFile {
            path,
            partition_values,
            data_change: a.get("dataChange").and_then(Value::as_bool).unwrap_or(true),
            deletion_vector: a.get("deletionVector").is_some_and(|d| !d.is_null()),
            size: a.get("size").and_then(Value::as_u64).unwrap_or(0),
        })));
    }
    if let Some(r) = v.get("remove") {
        return Ok(Some(Action::Remove {
            path: percent_decode(&s(r, "path")?)?,
            data_change: r.get("dataChange").and_then(Value::as_bool).unwrap_or(true),
        }));
    }
    if let Some(m) = v.get("metaData") {
        let schema: Value = serde_json::from_str(&s(m, "schemaString")?).map_err(|e| format!("schemaString: {e}"))?;
        let fields = schema
            .get("fields")
            .and_then(Value::as_array)
            .ok_or("schemaString has no fields")?
            .iter()
            .map(|f| {
                Ok(DeltaField {
                    name: s(f, "name")?,
                    ty: f.get("type").cloned().ok_or("a field has no type")?,
                    nullable: f.get("nullable").and_then(Value::as_bool).unwrap_or(true),
                    metadata: f.get("metadata").cloned().unwrap_or_else(|| json!({})),
                })
            })
            .collect::<std::result::Result<Vec<_>, String>>()?;
        let partition_columns = m
            .get("partitionColumns")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        let mut configuration = BTreeMap::new();
        if let Some(Value::Object(c)) = m.get("configuration") {
            for (k, v) in c {
                if let Some(v) = v.as_str() {
                    configuration.insert(k.clone(), v.to_string());
                }
            }
        }
        return Ok(Some(Action::Metadata(Metadata { fields, partition_columns, configuration })));
    }
    if let Some(p) = v.get("protocol") {
        let list = |k: &str| -> Vec<String> {
            p.get(k)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        return Ok(Some(Action::Protocol(Protocol {
            min_reader: p.get("minReaderVersion").and_then(Value::as_i64).unwrap_or(1),
            min_writer: p.get("minWriterVersion").and_then(Value::as_i64).unwrap_or(2),
            reader_features: list("readerFeatures"),
            writer_features: list("writerFeatures"),
        })));
    }
    if let Some(t) = v.get("txn") {
        return Ok(Some(Action::Txn {
            app_id: s(t, "appId")?,
            version: t.get("version").and_then(Value::as_i64).ok_or("txn has no version")?,
        }));
    }
    if let Some(c) = v.get("commitInfo") {
        return Ok(c.get("operation").and_then(Value::as_str).map(|o| Action::Operation(o.to_string())));
    }
    Ok(None)
}

impl Snapshot {
    /// The table at its latest version (None: no table at `table`, no commit 0).
    pub(super) fn load(table: &Path) -> Result<Option<Snapshot>> {
        Self::load_at(table, None)
    }

    /// The table at `version` (or the latest).
    pub(super) fn load_at(table: &Path, version: Option<u64>) -> Result<Option<Snapshot>> {
        let Some(first) = read_commit(table, 0)? else {
            if log_dir(table).join("_last_checkpoint").exists() {
                return Err(Error::not_implemented(format!(
                    "Delta table '{}': its log starts at a checkpoint (the early JSON commits were cleaned up); \
                     LaminarDB reads JSON commits from version 0",
                    table.display()
                )));
            }
            return Ok(None);
        };
        let mut snap = Snapshot {
            version: 0,
            protocol: Protocol::default(),
            metadata: Metadata { fields: vec![], partition_columns: vec![], configuration: BTreeMap::new() },
            files: BTreeMap::new(),
            txns: HashMap::new(),
        };
        let mut have_meta = false;
        for a in first {
            have_meta |= matches!(a, Action::Metadata(_));
            snap.apply(a);
        }
        if !have_meta {
            return Err(bad(table, 0, "no metaData action"));
        }
        while version.is_none_or(|v| snap.version < v) {
            match read_commit(table, snap.version + 1)? {
                Some(actions) => {
                    snap.version += 1;
                    for a in actions {
                        snap.apply(a);
                    }
                }
                None if version.is_some() => {
                    return Err(bad(table, snap.version + 1, "the commit is missing"));
                }
                None => break,
            }
        }
        Ok(Some(snap))
    }

    pub(super) fn apply(&mut self, a: Action) {
        match a {
            Action::Add(f) => {
                self.files.insert(f.path.clone(), f);
            }
            Action::Remove { path, .. } => {
                self.files.remove(&path);
            }
            Action::Metadata(m) => self.metadata = m,
            Action::Protocol(p) => self.protocol = p,
            Action::Txn { app_id, version } => {
                self.txns.insert(app_id, version);
            }
            Action::Operation(_) => {}
        }
    }

    /// Refuses a table this reader cannot read correctly (`what` names the source).
    pub(super) fn check_readable(&self, table: &Path, what: &str) -> Result<()> {
        self.protocol.check_readable(table, what)?;
        if let Some(f) = self.files.values().find(|f| f.deletion_vector) {
            return Err(Error::not_implemented(format!(
                "{what}: Delta table '{}': file '{}' has a deletion vector (rows deleted in place), which LaminarDB does not read",
                table.display(),
                clip(&f.path)
            )));
        }
        Ok(())
    }

    /// Refuses a table this writer cannot append to correctly.
    pub(super) fn check_writable(&self, table: &Path, what: &str) -> Result<()> {
        self.check_readable(table, what)?;
        self.protocol.check_writable(table, what)?;
        self.metadata.check_writable(table, what)
    }
}

impl Protocol {
    /// Refuses reader versions and features this reader does not implement.
    pub(super) fn check_readable(&self, table: &Path, what: &str) -> Result<()> {
        const KNOWN: &[&str] =
            &["timestampNtz", "deletionVectors", "v2Checkpoint", "vacuumProtocolCheck", "typeWidening-preview"];
        if self.min_reader > 3 || self.min_reader == 2 {
            return Err(Error::not_implemented(format!(
                "{what}: Delta table '{}' needs reader version {} (column mapping); LaminarDB reads versions 1 and 3",
                table.display(),
                self.min_reader
            )));
        }
        if let Some(f) = self.reader_features.iter().find(|f| !KNOWN.contains(&f.as_str())) {
            return Err(Error::not_implemented(format!(
                "{what}: Delta table '{}' uses the reader feature '{}', which LaminarDB does not read",
                table.display(),
                clip(f)
            )));
        }
        Ok(())
    }

    /// Refuses writer versions and features this writer does not honour (and what a reader
    /// refuses).
    pub(super) fn check_writable(&self, table: &Path, what: &str) -> Result<()> {
        self.check_readable(table, what)?;
        const KNOWN: &[&str] = &[
            "appendOnly",
            "invariants",
            "timestampNtz",
            "deletionVectors",
            "v2Checkpoint",
            "vacuumProtocolCheck",
            "changeDataFeed",
            "checkConstraints",
            "domainMetadata",
        ];
        let refuse = |m: String| Err(Error::not_implemented(format!("{what}: Delta table '{}' {m}", table.display())));
        if (3..7).contains(&self.min_writer) || self.min_writer > 7 {
            return refuse(format!(
                "needs writer version {} (constraints, generated or identity columns, column mapping); LaminarDB writes versions 1, 2 and 7",
                self.min_writer
            ));
        }
        if let Some(f) = self.writer_features.iter().find(|f| !KNOWN.contains(&f.as_str())) {
            return refuse(format!("uses the writer feature '{}', which LaminarDB does not write", clip(f)));
        }
        Ok(())
    }
}

impl Metadata {
    /// Refuses constraints and invariants, which this writer does not enforce.
    pub(super) fn check_writable(&self, table: &Path, what: &str) -> Result<()> {
        let refuse = |m: String| Err(Error::not_implemented(format!("{what}: Delta table '{}' {m}", table.display())));
        if let Some(k) = self.configuration.keys().find(|k| k.starts_with("delta.constraints.")) {
            return refuse(format!("has the CHECK constraint '{}', which LaminarDB does not enforce", clip(k)));
        }
        if let Some(f) = self.fields.iter().find(|f| f.metadata.get("delta.invariants").is_some()) {
            return refuse(format!("has an invariant on column '{}', which LaminarDB does not enforce", clip(&f.name)));
        }
        Ok(())
    }
}

/// The commits after version `known`, read one by one until the first missing version, with
/// their actions, in order.
pub(super) fn commits_after(table: &Path, known: u64) -> Result<Vec<(u64, Vec<Action>)>> {
    let mut out = vec![];
    let mut v = known + 1;
    while let Some(a) = read_commit(table, v)? {
        out.push((v, a));
        v += 1;
    }
    Ok(out)
}

/// Writes commit `version` with `actions` (one JSON object each) unless it exists: Ok(false)
/// when another writer took the version first.
pub(super) fn try_commit(table: &Path, version: u64, actions: &[Value]) -> Result<bool> {
    let dir = log_dir(table);
    fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, e))?;
    let mut text = String::new();
    for a in actions {
        text.push_str(&a.to_string());
        text.push('\n');
    }
    let tmp = dir.join(format!(".{version:020}.json.{}.tmp", unique()));
    let target = commit_path(table, version);
    let written = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(io("cannot write", &tmp, e));
    }
    let linked = fs::hard_link(&tmp, &target);
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(&dir)?;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(io("cannot put the commit in place", &target, e)),
    }
}

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io("cannot sync the directory", dir, e))
}

/// A string unique to this process and moment (file names, the table id).
pub(super) fn unique() -> String {
    use std::hash::{BuildHasher, Hasher};
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.write_u32(std::process::id());
    let a = h.finish();
    h.write_u64(a);
    format!("{a:016x}{:016x}", h.finish())
}

/// A UUID (version 4 layout) for a new table's id.
pub(super) fn uuid() -> String {
    let u = unique();
    format!("{}-{}-4{}-a{}-{}", &u[0..8], &u[8..12], &u[13..16], &u[17..20], &u[20..32])
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

// ------------------------------------------------------------------------------ paths as URIs

/// A relative path as the log writes it: a URI path, `%`-encoding everything but unreserved
/// characters, `/` and `=` (as Spark and delta-rs write partition directories).
pub(super) fn percent_encode(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/=".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> std::result::Result<String, String> {
    if !s.contains('%') {
        return Ok(s.to_string());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(hex.ok_or_else(|| format!("bad %-escape in path '{}'", clip(s)))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("path '{}' is not UTF-8 once decoded", clip(s)))
}

/// A partition value as a directory name part (Hive's escaping; null is Hive's default
/// partition name).
pub(super) fn hive_escape(v: Option<&str>) -> String {
    let Some(v) = v else { return "__HIVE_DEFAULT_PARTITION__".into() };
    let mut out = String::new();
    for c in v.chars() {
        if c.is_control() || "\"#%'*/:=?\\\u{7f}{[]^".contains(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ------------------------------------------------------------------------------------ types

/// The Delta type of an Arrow type, as a sink writes it (None: not supported).
pub(super) fn delta_type(dt: &DataType) -> Option<String> {
    Some(
        match dt {
            DataType::Boolean => "boolean",
            DataType::Int8 => "byte",
            DataType::Int16 | DataType::UInt8 => "short",
            DataType::Int32 | DataType::UInt16 => "integer",
            DataType::Int64 | DataType::UInt32 => "long",
            DataType::Float32 => "float",
            DataType::Float64 => "double",
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string",
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView | DataType::FixedSizeBinary(_) => "binary",
            DataType::Date32 | DataType::Date64 => "date",
            DataType::Timestamp(_, None) => "timestamp_ntz",
            DataType::Timestamp(_, Some(_)) => "timestamp",
            DataType::Decimal128(p, s) if *s >= 0 && *p <= 38 => return Some(format!("decimal({p},{s})")),
            _ => return None,
        }
        .to_string(),
    )
}

/// The Arrow type a sink writes to Parquet for a column of `dt` (Delta keeps timestamps in
/// microseconds, UTC for `timestamp`; it has no unsigned integers).
pub(super) fn physical_type(dt: &DataType) -> DataType {
    match dt {
        DataType::UInt8 => DataType::Int16,
        DataType::UInt16 => DataType::Int32,
        DataType::UInt32 => DataType::Int64,
        DataType::Date64 => DataType::Date32,
        DataType::FixedSizeBinary(_) | DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        DataType::Timestamp(_, None) => DataType::Timestamp(TimeUnit::Microsecond, None),
        DataType::Timestamp(_, Some(_)) => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        other => other.clone(),
    }
}

/// A field of the table's schema for an Arrow field.
pub(super) fn delta_field(f: &Field) -> Option<Value> {
    Some(json!({"name": f.name(), "type": delta_type(f.data_type())?, "nullable": f.is_nullable(), "metadata": {}}))
}

/// A Delta type for messages.
pub(super) fn type_name(ty: &Value) -> String {
    match ty {
        Value::String(s) => s.clone(),
        other => other.get("type").and_then(Value::as_str).unwrap_or("nested").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_through_the_uri_encoding() {
        for p in ["a=1/part-0.parquet", "k=a b%c/ü.parquet", "x=__HIVE_DEFAULT_PARTITION__/f"] {
            assert_eq!(percent_decode(&percent_encode(p)).unwrap(), p);
        }
        assert_eq!(percent_encode("k=a b/f"), "k=a%20b/f");
        assert!(percent_decode("a%2").is_err());
        assert_eq!(hive_escape(Some("a/b:c")), "a%2Fb%3Ac");
        assert_eq!(hive_escape(None), "__HIVE_DEFAULT_PARTITION__");
    }

    #[test]
    fn uuids_look_like_uuids() {
        let u = uuid();
        assert_eq!(u.len(), 36, "{u}");
        assert_eq!(u.matches('-').count(), 4);
        assert_ne!(uuid(), uuid());
    }
}

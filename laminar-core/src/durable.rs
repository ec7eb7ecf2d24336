//! On-disk durability (DESIGN §4): the write-ahead log, checkpoint files and their manifests.
//!
//! ```text
//! <path>/LOCK                          held (flock) while a process has the database open
//! <path>/wal/<first seq>.wal           records: [len u32][crc32 u32][seq u64][kind u8][body]
//!                                      (`.log`: written at durability checkpoint or by an
//!                                      earlier version; see Segment)
//! <path>/checkpoints/MANIFEST-<epoch>  text, checksummed; renamed into place last (atomic)
//! <path>/checkpoints/blobs/<hash>      one object's state (Arrow IPC), named by its content
//! <path>/checkpoints/state/<epoch>/    the RocksDB state backend's files at that checkpoint
//!                                      (SSTs hard-linked), listed in its manifest
//! <path>/state/                        the RocksDB state backend's live instance, rebuilt
//!                                      from the restored checkpoint's copy at every open
//! ```
//! A checkpoint writes each object's state as a blob named by a hash of its bytes; a blob that
//! an earlier checkpoint already wrote (unchanged state) is not written again, which makes
//! checkpoints incremental at object granularity. The manifest lists every blob with its length
//! and CRC-32; recovery takes the newest manifest whose checksums all hold and falls back to the
//! previous one (with a warning) otherwise. Log segments are deleted once the oldest retained
//! checkpoint covers all their records, so falling back never loses a logged push. Replaying
//! the log drops a torn tail of the newest segment (a write never acknowledged) and refuses
//! damage that lost records the log proves were written, unless told to salvage (`replay_log`).
//!
//! This module knows files and formats; the database (db.rs) decides what goes in them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, ErrorKind, Result};

const MANIFEST_HEADER: &str = "LAMINARDB CHECKPOINT 1";
/// A log segment is closed and a new one started past this size.
const SEGMENT_BYTES: u64 = 64 << 20;

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}"))
}

// ------------------------------------------------------------------ I/O and fault injection

/// Simulated write failures for tests: once `budget` bytes have been written, writes fail with
/// "No space left on device" (a full disk), after writing what still fits (a torn write).
#[derive(Debug)]
pub(crate) struct Faults {
    budget: AtomicI64,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { budget: AtomicI64::new(i64::MAX) }
    }
}

impl Faults {
    pub(crate) fn set_budget(&self, bytes: Option<u64>) {
        self.budget.store(bytes.map(|b| b.min(i64::MAX as u64) as i64).unwrap_or(i64::MAX), Ordering::Release);
    }

    /// Takes `n` bytes from the budget; how many of them may be written (fewer: the disk is full
    /// and the budget is spent).
    fn take(&self, n: usize) -> usize {
        let budget = self.budget.load(Ordering::Acquire);
        if budget == i64::MAX {
            return n;
        }
        if (budget.max(0) as usize) < n {
            self.budget.store(0, Ordering::Release);
            return budget.max(0) as usize;
        }
        self.budget.fetch_sub(n as i64, Ordering::AcqRel);
        n
    }
}

/// How log and checkpoint files are written and made durable: `io_uring` (Linux; a write and a
/// data sync submitted together, linked) or plain `write` + `fdatasync`.
pub(crate) enum Io {
    Std,
    #[cfg(target_os = "linux")]
    Uring(Box<io_uring::IoUring>),
}

impl Io {
    pub(crate) fn new(choice: crate::config::IoBackend) -> Result<Io> {
        use crate::config::IoBackend;
        match choice {
            IoBackend::Std => Ok(Io::Std),
            IoBackend::Auto => Ok(Self::uring().unwrap_or(Io::Std)),
            IoBackend::IoUring => Self::uring().map_err(|e| {
                Error::not_implemented(format!("io_backend 'io_uring' is not available here: {e}; use 'auto' or 'std'"))
            }),
        }
    }

    #[cfg(target_os = "linux")]
    fn uring() -> std::io::Result<Io> {
        Ok(Io::Uring(Box::new(io_uring::IoUring::new(8)?)))
    }
    #[cfg(not(target_os = "linux"))]
    fn uring() -> std::io::Result<Io> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "io_uring is Linux only"))
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Io::Std => "std",
            #[cfg(target_os = "linux")]
            Io::Uring(_) => "io_uring",
        }
    }

    /// Writes `data` at `offset` of `f` and syncs its data. A simulated full disk writes what
    /// fits, then fails with ENOSPC.
    fn write_sync(&mut self, faults: &Faults, f: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let allowed = faults.take(data.len());
        if allowed < data.len() {
            f.write_all_at(&data[..allowed], offset)?;
            return Err(std::io::Error::from_raw_os_error(28));
        }
        match self {
            #[cfg(target_os = "linux")]
            Io::Uring(ring) => uring_write_sync(ring, std::os::fd::AsRawFd::as_raw_fd(f), offset, data),
            Io::Std => {
                f.write_all_at(data, offset)?;
                f.sync_data()
            }
        }
    }
}

/// One linked write + fdatasync per round, repeated after a short write.
#[cfg(target_os = "linux")]
fn uring_write_sync(ring: &mut io_uring::IoUring, fd: i32, mut offset: u64, mut data: &[u8]) -> std::io::Result<()> {
    use io_uring::{opcode, squeue, types};
    const ECANCELED: i32 = 125;
    loop {
        let n = data.len().min(1 << 30);
        let write = opcode::Write::new(types::Fd(fd), data.as_ptr(), n as u32)
            .offset(offset)
            .build()
            .flags(squeue::Flags::IO_LINK)
            .user_data(1);
        let sync = opcode::Fsync::new(types::Fd(fd)).flags(types::FsyncFlags::DATASYNC).build().user_data(2);
        // SAFETY: `data` outlives the submission: we wait for both completions below.
        unsafe {
            let mut sq = ring.submission();
            sq.push(&write).map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
            sq.push(&sync).map_err(|_| std::io::Error::other("io_uring submission queue full"))?;
        }
        ring.submit_and_wait(2)?;
        let (mut wrote, mut synced) = (None, None);
        for cqe in ring.completion() {
            if cqe.user_data() == 1 {
                wrote = Some(cqe.result());
            } else {
                synced = Some(cqe.result());
            }
        }
        let (Some(w), Some(sr)) = (wrote, synced) else {
            return Err(std::io::Error::other("io_uring: a completion is missing"));
        };
        if w < 0 {
            return Err(std::io::Error::from_raw_os_error(-w));
        }
        if w == 0 && n > 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        offset += w as u64;
        data = &data[w as usize..];
        if sr < 0 && !(sr == -ECANCELED && !data.is_empty()) {
            return Err(std::io::Error::from_raw_os_error(-sr));
        }
        if data.is_empty() {
            return Ok(());
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(format!("syncing directory {}", dir.display()), e))
}

/// Writes `data` to `path` through a temporary file, syncs it and renames it into place.
fn write_atomic(io: &mut Io, faults: &Faults, path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let res = (|| {
        let f = File::create(&tmp)?;
        io.write_sync(faults, &f, 0, data)?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(format!("writing {}", path.display()), e));
    }
    Ok(())
}

// ------------------------------------------------------------------ the directory and its lock

/// The on-disk layout of one database, and the lock that keeps a second process out.
pub(crate) struct Store {
    pub root: PathBuf,
    pub faults: Arc<Faults>,
    lock: parking_lot::Mutex<Option<File>>,
    /// Checkpoint file I/O (the log has its own).
    io: parking_lot::Mutex<Io>,
    /// Blobs known intact: written by this process or verified when a checkpoint was loaded. A
    /// checkpoint reuses only these (never a file it has not checked, which could be corrupt).
    intact: parking_lot::Mutex<HashSet<String>>,
    /// The RocksDB state files of the last checkpoint written (to count what a new one adds).
    state_files: parking_lot::Mutex<HashSet<String>>,
    pub io_backend: crate::config::IoBackend,
}

impl Store {
    pub(crate) fn open(root: &Path, io_backend: crate::config::IoBackend) -> Result<Store> {
        let io = Io::new(io_backend)?;
        for d in [
            root.to_path_buf(),
            root.join("wal"),
            root.join("checkpoints"),
            root.join("checkpoints").join("blobs"),
            root.join("checkpoints").join("state"),
        ] {
            fs::create_dir_all(&d).map_err(|e| io_err(format!("creating {}", d.display()), e))?;
        }
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(format!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc_flock(std::os::fd::AsRawFd::as_raw_fd(&lock)) };
        if rc != 0 {
            return Err(Error::invalid_state(format!(
                "database '{}' is open in another process (or another Database in this one); close it first",
                root.display()
            )));
        }
        Ok(Store {
            root: root.to_path_buf(),
            faults: Arc::new(Faults::default()),
            lock: parking_lot::Mutex::new(Some(lock)),
            io: parking_lot::Mutex::new(io),
            intact: Default::default(),
            state_files: Default::default(),
            io_backend,
        })
    }

    /// `io_uring` or `std`: what writes this database's files.
    pub(crate) fn io_name(&self) -> &'static str {
        self.io.lock().name()
    }

    /// Lets another `open` of this directory in: the database is closed.
    pub(crate) fn release(&self) {
        self.lock.lock().take();
    }

    pub(crate) fn wal_dir(&self) -> PathBuf {
        self.root.join("wal")
    }
    fn cp_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    fn blob_dir(&self) -> PathBuf {
        self.root.join("checkpoints").join("blobs")
    }
    fn state_dir(&self) -> PathBuf {
        self.root.join("checkpoints").join("state")
    }
    /// The RocksDB state backend's live instance (replaced from a checkpoint at every open).
    pub(crate) fn live_state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
}

unsafe extern "C" {
    fn flock(fd: i32, operation: i32) -> i32;
}

/// `flock(fd, LOCK_EX | LOCK_NB)`; released when the file is closed (or the process dies).
unsafe fn libc_flock(fd: i32) -> i32 {
    const LOCK_EX: i32 = 2;
    const LOCK_NB: i32 = 4;
    // SAFETY: the caller passes an open descriptor.
    unsafe { flock(fd, LOCK_EX | LOCK_NB) }
}

// ------------------------------------------------------------------ batches as bytes

/// Encodes lists of batches: `[u32 lists]` then per list `[u32 batches]` and per batch
/// `[u64 len][Arrow IPC stream: schema + batch]`.
pub(crate) fn encode_lists(lists: &[Vec<RecordBatch>]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    out.extend_from_slice(&(lists.len() as u32).to_le_bytes());
    for list in lists {
        out.extend_from_slice(&(list.len() as u32).to_le_bytes());
        for b in list {
            let ipc = encode_batch(b)?;
            out.extend_from_slice(&(ipc.len() as u64).to_le_bytes());
            out.extend_from_slice(&ipc);
        }
    }
    Ok(out)
}

pub(crate) fn decode_lists(data: &[u8]) -> Result<Vec<Vec<RecordBatch>>> {
    let mut r = Cursor { data, pos: 0 };
    let n = r.u32()? as usize;
    let mut lists = Vec::with_capacity(n.min(1 << 16));
    for _ in 0..n {
        let m = r.u32()? as usize;
        let mut list = Vec::with_capacity(m.min(1 << 16));
        for _ in 0..m {
            let len = r.u64()? as usize;
            list.push(decode_batch(r.take(len)?)?);
        }
        lists.push(list);
    }
    Ok(lists)
}

pub(crate) fn encode_batch(b: &RecordBatch) -> Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(b.get_array_memory_size() + 512);
    let mut w = StreamWriter::try_new(&mut buf, &b.schema())?;
    w.write(b)?;
    w.finish()?;
    drop(w);
    Ok(buf)
}

pub(crate) fn decode_batch(data: &[u8]) -> Result<RecordBatch> {
    let mut r = StreamReader::try_new(std::io::Cursor::new(data), None)?;
    match r.next() {
        Some(b) => Ok(b?),
        None => Err(Error::invalid_data("an encoded batch holds no rows block")),
    }
}

struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.data.len() - self.pos < n {
            return Err(Error::invalid_data(format!(
                "truncated: {n} bytes wanted at offset {}, {} left",
                self.pos,
                self.data.len() - self.pos
            )));
        }
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::invalid_data("a name is not UTF-8"))
    }
    fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

// ------------------------------------------------------------------ the write-ahead log

/// One logged change, in the order the pipeline applied it.
#[derive(Debug, Clone)]
pub(crate) enum Record {
    /// A pushed batch; `position` is the position of its partition after it (a connector's).
    Batch { source: String, position: Option<crate::connector::Position>, batch: RecordBatch },
    /// A pushed watermark, in the engine's microseconds.
    Watermark { source: String, us: i64 },
    /// A catalog statement (CREATE, DROP) as the user wrote it.
    Ddl { sql: String },
    /// `DELETE FROM table`: the rows removed.
    Delete { table: String, rows: RecordBatch },
}

/// A record's body (kind and content, without its sequence number), encoded outside any lock,
/// with the CRC of its bytes.
pub(crate) struct Prepared {
    body: Vec<u8>,
    crc: crc32fast::Hasher,
}

pub(crate) fn prepare(rec: &Record) -> Result<Prepared> {
    let mut body = Vec::new();
    match rec {
        Record::Batch { source, position: None, batch } => {
            body.push(1);
            put_str(&mut body, source);
            body.extend_from_slice(&0u64.to_le_bytes());
            body.extend_from_slice(&encode_batch(batch)?);
        }
        Record::Batch { source, position: Some(p), batch } => {
            body.push(5);
            put_str(&mut body, source);
            put_str(&mut body, &p.partition);
            put_str(&mut body, &p.offset);
            body.push(p.finished as u8);
            body.extend_from_slice(&encode_batch(batch)?);
        }
        Record::Watermark { source, us } => {
            body.push(2);
            put_str(&mut body, source);
            body.extend_from_slice(&us.to_le_bytes());
        }
        Record::Ddl { sql } => {
            body.push(3);
            put_str(&mut body, sql);
        }
        Record::Delete { table, rows } => {
            body.push(4);
            put_str(&mut body, table);
            body.extend_from_slice(&encode_batch(rows)?);
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body);
    Ok(Prepared { body, crc })
}

/// Appends one framed record: `[len u32][crc32 of seq+body u32][seq u64][body]`.
pub(crate) fn frame(out: &mut Vec<u8>, seq: u64, p: &Prepared) {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.combine(&p.crc);
    out.extend_from_slice(&((p.body.len() + 8) as u32).to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&p.body);
}

#[cfg(test)]
fn encode_record(out: &mut Vec<u8>, seq: u64, rec: &Record) -> Result<()> {
    frame(out, seq, &prepare(rec)?);
    Ok(())
}

fn decode_record(body: &[u8]) -> Result<(u64, Record)> {
    let mut r = Cursor { data: body, pos: 0 };
    let seq = r.u64()?;
    let rec = match r.u8()? {
        1 => {
            let source = r.str()?;
            // Written by an older version with a connector position: the NEXMARK generator's
            // event number (partition "0").
            let position = r.u64()?.checked_sub(1).map(|p| crate::connector::Position {
                partition: "0".into(),
                offset: p.to_string(),
                finished: false,
            });
            Record::Batch { source, position, batch: decode_batch(r.rest())? }
        }
        5 => {
            let source = r.str()?;
            let (partition, offset) = (r.str()?, r.str()?);
            let finished = r.u8()? != 0;
            let position = Some(crate::connector::Position { partition, offset, finished });
            Record::Batch { source, position, batch: decode_batch(r.rest())? }
        }
        2 => {
            let source = r.str()?;
            Record::Watermark { source, us: r.u64()? as i64 }
        }
        3 => Record::Ddl { sql: r.str()? },
        4 => {
            let table = r.str()?;
            Record::Delete { table, rows: decode_batch(r.rest())? }
        }
        k => return Err(Error::invalid_data(format!("unknown record kind {k}"))),
    };
    Ok((seq, rec))
}

/// The segment being appended to. Writes go to the end, then `fdatasync`.
pub(crate) struct LogWriter {
    dir: PathBuf,
    file: File,
    bytes: u64,
    /// Durability `wal`: every sequence number goes into the log (segments named `.wal`).
    every_seq: bool,
    faults: Arc<Faults>,
    io: Io,
}

/// A log segment file: `<first seq>.wal` or `<first seq>.log`.
///
/// A `.wal` segment was written at durability `wal`, where every sequence number from the
/// segment's first on is a record in the log: so the next segment's first number proves which
/// records this one held. A `.log` segment was written at durability `checkpoint` (pushes take
/// numbers but are not logged, so gaps are normal) or by an earlier version; for those only
/// damage inside the file can be detected.
struct Segment {
    first: u64,
    path: PathBuf,
    every_seq: bool,
}

fn segment_path(dir: &Path, first: u64, every_seq: bool) -> PathBuf {
    dir.join(format!("{first:020}.{}", if every_seq { "wal" } else { "log" }))
}

fn segments(dir: &Path) -> Result<Vec<Segment>> {
    let mut v = vec![];
    for e in fs::read_dir(dir).map_err(|e| io_err(format!("listing {}", dir.display()), e))? {
        let e = e.map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
        let name = e.file_name().to_string_lossy().to_string();
        let (stem, every_seq) = match (name.strip_suffix(".wal"), name.strip_suffix(".log")) {
            (Some(stem), _) => (stem, true),
            (None, Some(stem)) => (stem, false),
            _ => continue,
        };
        if let Ok(first) = stem.parse::<u64>() {
            v.push(Segment { first, path: e.path(), every_seq });
        }
    }
    v.sort_by(|a, b| (a.first, &a.path).cmp(&(b.first, &b.path)));
    Ok(v)
}

impl LogWriter {
    /// Starts a new segment whose first record will be `first_seq` (at durability `wal`, every
    /// number from there on is logged: `every_seq`).
    pub(crate) fn create(
        dir: &Path,
        first_seq: u64,
        every_seq: bool,
        faults: Arc<Faults>,
        io: Io,
    ) -> Result<LogWriter> {
        // A segment of the same number written at the other level holds no intact record: every
        // record numbered from `first_seq` on is yet to be written.
        let other = segment_path(dir, first_seq, !every_seq);
        match fs::remove_file(&other) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(format!("removing {}", other.display()), e));
            }
            _ => {}
        }
        let path = segment_path(dir, first_seq, every_seq);
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_err(format!("creating {}", path.display()), e))?;
        sync_dir(dir)?;
        Ok(LogWriter { dir: dir.to_path_buf(), file, bytes: 0, every_seq, faults, io })
    }

    /// Writes `data` (framed records, the first numbered `first_seq`) and waits until it is on
    /// disk; in a new segment when `rotate` (after a checkpoint, so old segments can go) or when
    /// this one is full. A record is acknowledged only after this returns: a write that fails or
    /// that a crash interrupts leaves at most this one unacknowledged group at the end of the
    /// newest segment, and nothing is written after it (the database refuses changes until it is
    /// reopened).
    pub(crate) fn append(&mut self, first_seq: u64, data: &[u8], rotate: bool) -> Result<()> {
        if rotate || self.bytes >= SEGMENT_BYTES {
            let io = std::mem::replace(&mut self.io, Io::Std);
            *self = LogWriter::create(&self.dir, first_seq, self.every_seq, self.faults.clone(), io)?;
        }
        let res = self.io.write_sync(&self.faults, &self.file, self.bytes, data);
        res.map_err(|e| io_err(format!("write-ahead log ({})", self.io.name()), e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }
}

/// What is wrong with the record at some offset of a segment.
enum Bad {
    /// The file ends inside the record (`have` of `need` bytes).
    CutShort {
        have: usize,
        need: usize,
    },
    /// A length too small for a record (a zeroed region reads as length 0).
    Length(usize),
    Checksum,
}

impl Bad {
    fn describe(&self) -> String {
        match self {
            Bad::CutShort { have, need } => format!("a record cut short ({have} of its {need} bytes)"),
            Bad::Length(len) => format!("a record with an impossible length ({len})"),
            Bad::Checksum => "a record that fails its checksum".into(),
        }
    }
}

/// The smallest record: length, checksum, sequence number and kind.
const MIN_RECORD: usize = 17;

/// The body length of the intact record at `pos`, or what is wrong with it.
fn frame_at(data: &[u8], pos: usize) -> std::result::Result<usize, Bad> {
    let left = data.len() - pos;
    if left < 8 {
        return Err(Bad::CutShort { have: left, need: 8 });
    }
    let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
    if len < MIN_RECORD - 8 {
        return Err(Bad::Length(len));
    }
    if left - 8 < len {
        return Err(Bad::CutShort { have: left, need: 8 + len });
    }
    let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4"));
    if crc32fast::hash(&data[pos + 8..pos + 8 + len]) != crc {
        return Err(Bad::Checksum);
    }
    Ok(len)
}

/// Where a search for intact records after damage ended.
enum Scan {
    /// The first intact record: its offset and sequence number.
    Found(usize, u64),
    /// No intact record follows.
    Nothing,
    /// Too much checksum work to tell (garbage that keeps looking like long records).
    Undecided,
}

/// Looks for an intact record from byte `from` on: a length that fits, a sequence number in
/// (`above`, `below`), a known record kind and a checksum that holds. An intact record found
/// there was written after the damaged bytes before it.
fn next_intact(data: &[u8], from: usize, above: u64, below: u64) -> Scan {
    let mut budget = (data.len() as u64).saturating_mul(4).max(64 << 20);
    let mut q = from;
    while q + MIN_RECORD <= data.len() {
        let len = u32::from_le_bytes(data[q..q + 4].try_into().expect("4")) as usize;
        let seq = u64::from_le_bytes(data[q + 8..q + 16].try_into().expect("8"));
        if len >= MIN_RECORD - 8
            && len <= data.len() - q - 8
            && seq > above
            && seq < below
            && (1..=4).contains(&data[q + 16])
        {
            if budget < len as u64 {
                return Scan::Undecided;
            }
            budget -= len as u64;
            let crc = u32::from_le_bytes(data[q + 4..q + 8].try_into().expect("4"));
            if crc32fast::hash(&data[q + 8..q + 8 + len]) == crc {
                return Scan::Found(q, seq);
            }
        }
        q += 1;
    }
    Scan::Nothing
}

/// Cuts a torn tail off a segment, so that it is not met again once newer segments follow.
fn cut_tail(path: &Path, len: usize) -> Result<()> {
    OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| {
            f.set_len(len as u64)?;
            f.sync_all()
        })
        .map_err(|e| io_err(format!("cutting the torn tail off {}", path.display()), e))
}

/// What [`replay_log`] found.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Replayed {
    /// The highest sequence number replayed, covered by the checkpoint or proven lost: the log
    /// goes on after it.
    pub last: u64,
    /// Logged records were lost (`wal_recovery = 'salvage'` opened anyway).
    pub lost: bool,
}

/// Records a log lost: an `IO` error (strict), or a warning (salvage).
struct Loss<'a> {
    rule: crate::config::WalRecovery,
    warnings: &'a mut Vec<String>,
    out: &'a mut Replayed,
}

impl Loss<'_> {
    /// `what` happened at byte `at` of `path`; `bytes` of it are unreadable and the records
    /// numbered `seqs` (inclusive; None: unknown) are gone. `exact`: the segment logs every
    /// number, so all of them were records.
    fn report(
        &mut self,
        path: &Path,
        at: usize,
        what: &str,
        bytes: usize,
        seqs: Option<(u64, u64)>,
        exact: bool,
    ) -> Result<()> {
        let records = match seqs {
            Some((a, b)) if exact => {
                format!("{} record{} (sequence numbers {a} to {b})", b - a + 1, if a == b { "" } else { "s" })
            }
            Some((a, b)) => format!(
                "the records numbered {a} to {b} (up to {}: at durability 'checkpoint' pushes are not logged)",
                b - a + 1
            ),
            None => "an unknown number of records".into(),
        };
        let bytes = if bytes > 0 { format!(", {bytes} bytes unreadable") } else { String::new() };
        let msg = format!("write-ahead log {}, byte {at}: {what}: {records} lost{bytes}", path.display());
        match self.rule {
            crate::config::WalRecovery::Strict => Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{msg}; the log is damaged, so the database is not opened (set wal_recovery = 'salvage' to open it without those records, replaying every intact one)"
                ),
            )),
            crate::config::WalRecovery::Salvage => {
                self.warnings.push(format!("{msg}; skipped (wal_recovery = 'salvage'), every intact record replayed"));
                self.out.lost = true;
                if let Some((_, b)) = seqs {
                    self.out.last = self.out.last.max(b);
                }
                Ok(())
            }
        }
    }
}

/// Calls `f` for every intact record with a sequence number above `after` (the checkpoint's), in
/// order, and tells a torn tail from damage that lost records the log proves were written:
///
/// - A torn tail — no intact record after the damage, in the newest segment — is a write a
///   crash or a failed write interrupted: it was never acknowledged. It is dropped with a
///   warning and cut off the file.
/// - Damage with an intact record after it in the same segment lost the records between the
///   two (their sequence numbers are known).
/// - Damage at the end of an older segment, or a `.wal` segment whose last record is numbered
///   below the next segment's first (cut at a record boundary, down to 0 bytes), lost the
///   numbers up to the next segment's first — unless the checkpoint covers them, or there are
///   none (a torn tail an earlier crash left).
///
/// Losses are an `IO` error naming the file and offset (`wal_recovery = 'strict'`), or are
/// skipped with a warning counting them (`'salvage'`; records whose replay then fails, such as
/// pushes into a source whose CREATE was lost, are skipped and counted too). A cut at a record
/// boundary of the newest segment is not detectable: nothing after it says more was written.
pub(crate) fn replay_log(
    dir: &Path,
    after: u64,
    rule: crate::config::WalRecovery,
    warnings: &mut Vec<String>,
    mut f: impl FnMut(u64, Record) -> Result<()>,
) -> Result<Replayed> {
    let segs = segments(dir)?;
    let mut out = Replayed { last: after, lost: false };
    let mut failed: (u64, Option<Error>) = (0, None);
    let mut warn = vec![];
    let mut loss = Loss { rule, warnings: &mut warn, out: &mut out };
    // Segments are deleted oldest first, once the oldest kept checkpoint covers them.
    if let Some(first) = segs.first().filter(|s| s.every_seq && s.first > after.saturating_add(1)) {
        loss.report(
            &first.path,
            0,
            &format!("the log before this segment is missing (the checkpoint covers records up to {after})"),
            0,
            Some((after + 1, first.first - 1)),
            true,
        )?;
    }
    for (i, seg) in segs.iter().enumerate() {
        let next = segs.get(i + 1);
        // Every record of a segment is numbered below the next segment's first.
        if next.is_some_and(|n| n.first.saturating_sub(1) <= after) {
            continue;
        }
        let path = &seg.path;
        let mut data = vec![];
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| io_err(format!("reading {}", path.display()), e))?;
        // The number of the last intact record (before the first: the one before the segment's).
        let mut prev = seg.first.saturating_sub(1);
        let mut pos = 0usize;
        let mut tail_done = false;
        while pos < data.len() {
            let bad = match frame_at(&data, pos) {
                Ok(len) => {
                    let (seq, rec) = decode_record(&data[pos + 8..pos + 8 + len])
                        .map_err(|e| e.context(format!("{}: record at byte {pos}", path.display())))?;
                    pos += 8 + len;
                    prev = prev.max(seq);
                    if seq <= after {
                        continue;
                    }
                    loss.out.last = loss.out.last.max(seq);
                    if let Err(e) = f(seq, rec) {
                        // Salvage: a record may depend on a lost one.
                        if !loss.out.lost {
                            return Err(e);
                        }
                        failed.0 += 1;
                        failed.1.get_or_insert(e);
                    }
                    continue;
                }
                Err(bad) => bad,
            };
            let what = bad.describe();
            let left = data.len() - pos;
            let below = next.map_or(u64::MAX, |n| n.first);
            // At durability `wal` the k-th record after `prev` is numbered prev + k; otherwise
            // pushes take numbers too: allow for 2^40 of them between two logged records.
            let below = if seg.every_seq {
                below.min(prev.saturating_add(2 + (left / MIN_RECORD) as u64))
            } else {
                below.min(prev.saturating_add(1 << 40))
            };
            match next_intact(&data, pos + 1, prev, below) {
                Scan::Found(q, seq) => {
                    let lost = (prev.max(after).saturating_add(1), seq - 1);
                    if lost.0 <= lost.1 {
                        loss.report(
                            path,
                            pos,
                            &format!("{what}, with intact records after it"),
                            q - pos,
                            Some(lost),
                            seg.every_seq,
                        )?;
                    } else if seq - 1 <= after {
                        loss.warnings.push(format!(
                            "write-ahead log {}: {what} at byte {pos} ({} bytes) held only records the checkpoint covers (up to {after}); ignored",
                            path.display(),
                            q - pos
                        ));
                    } else {
                        loss.warnings.push(format!(
                            "write-ahead log {}: {what} at byte {pos}: its {} bytes held no record (the intact records around them, {prev} and {seq}, are consecutive); ignored",
                            path.display(),
                            q - pos
                        ));
                    }
                    pos = q;
                }
                Scan::Undecided => {
                    let lost = next
                        .map(|n| (prev.max(after).saturating_add(1), n.first.saturating_sub(1)))
                        .filter(|l| l.0 <= l.1);
                    loss.report(
                        path,
                        pos,
                        &format!("{what}, and whether intact records follow cannot be told"),
                        left,
                        lost,
                        seg.every_seq,
                    )?;
                    tail_done = true;
                    break;
                }
                Scan::Nothing => {
                    let lost = next
                        .map(|n| (prev.max(after).saturating_add(1), n.first.saturating_sub(1)))
                        .filter(|l| l.0 <= l.1);
                    match (next, lost) {
                        (None, _) => {
                            let how = match bad {
                                Bad::CutShort { .. } => "a write that a crash or a failed write interrupted, so never acknowledged (a push returns only once its whole record is written and synced)".to_string(),
                                _ => format!("{what}, and no intact record follows: a write that a crash interrupted before it reached the disk (never acknowledged) leaves this, though so would damage to the last acknowledged one"),
                            };
                            loss.warnings.push(format!("write-ahead log {}: the last {left} bytes, from byte {pos}, are a torn tail: {how}; dropped", path.display()));
                            cut_tail(path, pos)?;
                        }
                        (Some(n), None) => {
                            loss.warnings.push(format!(
                                "write-ahead log {}: {what} at byte {pos} ({left} bytes to the end): a torn tail an earlier crash left, never acknowledged (the next segment, {}, starts right after the last intact record); dropped",
                                path.display(),
                                n.path.display()
                            ));
                            cut_tail(path, pos)?;
                        }
                        (Some(n), Some(l)) => {
                            let what = format!(
                                "{what}, in a segment older than {} (whose first record is {}): not a torn tail",
                                n.path.display(),
                                n.first
                            );
                            loss.report(path, pos, &what, left, Some(l), seg.every_seq)?;
                        }
                    }
                    tail_done = true;
                    break;
                }
            }
        }
        if let Some(n) = next.filter(|n| seg.every_seq && !tail_done && prev.max(after).saturating_add(1) < n.first) {
            let held =
                if prev < seg.first { "it holds no record".to_string() } else { format!("its last record is {prev}") };
            let what = format!(
                "the segment ends there ({held}), though the next segment, {}, starts at record {}",
                n.path.display(),
                n.first
            );
            loss.report(
                path,
                data.len(),
                &what,
                0,
                Some((prev.max(after).saturating_add(1), n.first.saturating_sub(1))),
                true,
            )?;
        }
    }
    if failed.0 > 0 {
        let e = failed.1.map(|e| e.to_string()).unwrap_or_default();
        warn.push(format!(
            "{} intact log records after the damage could not be replayed and were skipped (the first: {e})",
            failed.0
        ));
    }
    warnings.extend(warn);
    Ok(out)
}

/// Deletes the segments every record of which has a sequence number `<= upto` (never the newest).
pub(crate) fn truncate_log(dir: &Path, upto: u64) -> Result<usize> {
    let segs = segments(dir)?;
    let mut removed = 0;
    for w in segs.windows(2) {
        // Segment w[0] holds records w[0].first .. w[1].first - 1.
        if w[1].first > 0 && w[1].first - 1 <= upto {
            fs::remove_file(&w[0].path).map_err(|e| io_err(format!("removing {}", w[0].path.display()), e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

// ------------------------------------------------------------------ checkpoints

/// What one checkpoint wrote.
#[derive(Debug, Clone, Default)]
pub struct CheckpointStats {
    pub epoch: u64,
    /// Bytes of state the checkpoint refers to (all objects).
    pub bytes_total: u64,
    /// Bytes written by this checkpoint (objects whose state changed, and the manifest).
    pub bytes_written: u64,
    pub objects: usize,
    /// Objects whose state was unchanged since an earlier checkpoint and not written again.
    pub objects_reused: usize,
}

/// A loaded checkpoint: its epoch, the last log record it covers and each object's state.
pub(crate) struct Loaded {
    pub epoch: u64,
    pub seq: u64,
    pub objects: BTreeMap<String, Vec<Vec<RecordBatch>>>,
    /// The RocksDB state backend's files of this checkpoint (directory, file names), verified.
    pub state_dir: Option<(PathBuf, Vec<String>)>,
}

#[derive(Debug)]
struct Manifest {
    epoch: u64,
    seq: u64,
    /// Object name → (blob name, length, crc).
    objects: BTreeMap<String, (String, u64, u32)>,
    /// The RocksDB state backend's checkpoint: its directory under `checkpoints/state/` and its
    /// files (name, length, crc — SST files carry RocksDB's own block checksums and have none).
    state: Option<(String, Vec<(String, u64, Option<u32>)>)>,
}

/// A blob's name: its CRC-32 and 64-bit FNV-1a together (96 bits) and its length.
fn blob_name(data: &[u8], crc: u32) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for &b in data {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("{crc:08x}{h:016x}-{}", data.len())
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

fn manifest_text(m: &Manifest) -> String {
    let mut body = format!("{MANIFEST_HEADER}\nepoch {}\nseq {}\n", m.epoch, m.seq);
    for (name, (blob, len, crc)) in &m.objects {
        body.push_str(&format!("object {} {blob} {len} {crc:08x}\n", hex(name)));
    }
    if let Some((dir, files)) = &m.state {
        body.push_str(&format!("state {dir}\n"));
        for (f, len, crc) in files {
            let crc = crc.map_or("-".to_string(), |c| format!("{c:08x}"));
            body.push_str(&format!("statefile {} {len} {crc}\n", hex(f)));
        }
    }
    let crc = crc32fast::hash(body.as_bytes());
    body.push_str(&format!("end {crc:08x}\n"));
    body
}

fn parse_manifest(text: &str) -> std::result::Result<Manifest, String> {
    let Some(end) = text.rfind("end ") else { return Err("no end line (torn)".into()) };
    let (body, tail) = text.split_at(end);
    let crc = u32::from_str_radix(tail.trim_start_matches("end ").trim(), 16).map_err(|_| "a malformed end line")?;
    if crc32fast::hash(body.as_bytes()) != crc {
        return Err("its checksum does not match its content".into());
    }
    let mut lines = body.lines();
    if lines.next() != Some(MANIFEST_HEADER) {
        return Err("not a LaminarDB checkpoint manifest of this version".into());
    }
    let mut m = Manifest { epoch: 0, seq: 0, objects: BTreeMap::new(), state: None };
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["epoch", e] => m.epoch = e.parse().map_err(|_| "a malformed epoch")?,
            ["seq", s] => m.seq = s.parse().map_err(|_| "a malformed seq")?,
            ["object", name, blob, len, crc] => {
                let name = unhex(name).ok_or("a malformed object name")?;
                let len = len.parse().map_err(|_| "a malformed length")?;
                let crc = u32::from_str_radix(crc, 16).map_err(|_| "a malformed checksum")?;
                m.objects.insert(name, (blob.to_string(), len, crc));
            }
            ["state", dir] if dir.len() == 20 && dir.bytes().all(|b| b.is_ascii_digit()) => {
                m.state = Some((dir.to_string(), vec![]))
            }
            ["statefile", name, len, crc] => {
                // RocksDB's own names (000012.sst, MANIFEST-000005, OPTIONS-000007, CURRENT).
                let plain = |n: &String| {
                    !n.is_empty()
                        && !n.starts_with('.')
                        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                };
                let name = unhex(name).filter(plain).ok_or("a malformed state file name")?;
                let len = len.parse().map_err(|_| "a malformed length")?;
                let crc = if *crc == "-" {
                    None
                } else {
                    Some(u32::from_str_radix(crc, 16).map_err(|_| "a malformed checksum")?)
                };
                m.state.as_mut().ok_or("a state file before its state line")?.1.push((name, len, crc));
            }
            _ => return Err(format!("an unknown line '{line}'")),
        }
    }
    Ok(m)
}

fn manifests(store: &Store) -> Result<Vec<(u64, PathBuf)>> {
    let dir = store.cp_dir();
    let mut v = vec![];
    for e in fs::read_dir(&dir).map_err(|e| io_err(format!("listing {}", dir.display()), e))? {
        let e = e.map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(epoch) = name.strip_prefix("MANIFEST-").and_then(|s| s.parse::<u64>().ok()) {
            v.push((epoch, e.path()));
        } else if name.ends_with(".tmp") {
            // A checkpoint that never finished.
            let _ = fs::remove_file(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Writes a checkpoint: every object's blob (unless an identical one exists), then the manifest,
/// renamed into place last. Keeps the newest `retain` manifests and the blobs they use.
/// Returns the stats and the log position the oldest retained checkpoint covers (log segments
/// up to it can go).
pub(crate) fn write_checkpoint(
    store: &Store,
    epoch: u64,
    seq: u64,
    objects: Vec<(String, Vec<u8>)>,
    state: Option<&crate::state_store::StateStore>,
    retain: usize,
) -> Result<(CheckpointStats, u64)> {
    let blobs = store.blob_dir();
    let mut stats = CheckpointStats { epoch, objects: objects.len(), ..Default::default() };
    let mut m = Manifest { epoch, seq, objects: BTreeMap::new(), state: None };
    if let Some(st) = state {
        m.state = Some(checkpoint_state(store, st, epoch, &mut stats)?);
    }
    let mut wrote_any = false;
    for (name, data) in objects {
        let crc = crc32fast::hash(&data);
        let blob = blob_name(&data, crc);
        stats.bytes_total += data.len() as u64;
        if store.intact.lock().contains(&blob) {
            stats.objects_reused += 1;
        } else {
            write_atomic(&mut store.io.lock(), &store.faults, &blobs.join(&blob), &data)?;
            store.intact.lock().insert(blob.clone());
            stats.bytes_written += data.len() as u64;
            wrote_any = true;
        }
        m.objects.insert(name, (blob, data.len() as u64, crc));
    }
    if wrote_any {
        sync_dir(&blobs)?;
    }
    let text = manifest_text(&m);
    write_atomic(
        &mut store.io.lock(),
        &store.faults,
        &store.cp_dir().join(format!("MANIFEST-{epoch:020}")),
        text.as_bytes(),
    )?;
    sync_dir(&store.cp_dir())?;
    stats.bytes_written += text.len() as u64;
    // Retention: the newest `retain` manifests; blobs no retained manifest names are deleted.
    let all = manifests(store)?;
    let keep = retain.max(1);
    let mut oldest_seq = seq;
    let mut used: HashSet<String> = HashSet::new();
    let mut used_state: HashSet<String> = HashSet::new();
    for (i, (_, path)) in all.iter().enumerate() {
        if i + keep < all.len() {
            let _ = fs::remove_file(path);
            continue;
        }
        match fs::read_to_string(path).map_err(|e| e.to_string()).and_then(|t| parse_manifest(&t)) {
            Ok(old) => {
                oldest_seq = oldest_seq.min(old.seq);
                used.extend(old.objects.values().map(|o| o.0.clone()));
                used_state.extend(old.state.map(|s| s.0));
            }
            // An unreadable retained manifest keeps the log (and every blob) where it is.
            Err(_) => return Ok((stats, 0)),
        }
    }
    if let Ok(rd) = fs::read_dir(&blobs) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if !used.contains(&name) {
                let _ = fs::remove_file(e.path());
            }
        }
    }
    store.intact.lock().retain(|b| used.contains(b));
    if let Ok(rd) = fs::read_dir(store.state_dir()) {
        for e in rd.flatten() {
            if !used_state.contains(e.file_name().to_string_lossy().as_ref()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    Ok((stats, oldest_seq))
}

/// Checkpoints the RocksDB state backend into `checkpoints/state/<epoch>` (memtable flushed, SST
/// files hard-linked) and lists its files for the manifest.
fn checkpoint_state(
    store: &Store,
    st: &crate::state_store::StateStore,
    epoch: u64,
    stats: &mut CheckpointStats,
) -> Result<(String, Vec<(String, u64, Option<u32>)>)> {
    let name = format!("{epoch:020}");
    let dest = store.state_dir().join(&name);
    // Left by a checkpoint of this epoch that failed before its manifest was written.
    for d in [dest.clone(), PathBuf::from(format!("{}.tmp", dest.display()))] {
        if d.exists() {
            fs::remove_dir_all(&d).map_err(|e| io_err(format!("removing {}", d.display()), e))?;
        }
    }
    st.checkpoint(&dest)?;
    // RocksDB syncs the directory's files and renames it into place; the rename is made durable
    // here, before a manifest can refer to it.
    sync_dir(&store.state_dir())?;
    let mut files = vec![];
    let mut previous = store.state_files.lock();
    let mut now = HashSet::new();
    for e in fs::read_dir(&dest).map_err(|e| io_err(format!("listing {}", dest.display()), e))? {
        let e = e.map_err(|e| io_err(format!("listing {}", dest.display()), e))?;
        let fname = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        let len = e.metadata().map_err(|err| io_err(format!("reading {}", path.display()), err))?.len();
        let crc = if fname.ends_with(".sst") {
            None
        } else {
            Some(crc32fast::hash(&fs::read(&path).map_err(|err| io_err(format!("reading {}", path.display()), err))?))
        };
        stats.bytes_total += len;
        // An SST file of an earlier checkpoint is the same file, linked again; the rest is new.
        if !(fname.ends_with(".sst") && previous.contains(&fname)) {
            stats.bytes_written += len;
        }
        now.insert(fname.clone());
        files.push((fname, len, crc));
    }
    files.sort();
    *previous = now;
    Ok((name, files))
}

/// Loads (the `want`ed objects of) a checkpoint, verifying each blob; the blobs verified.
fn load_manifest(
    store: &Store,
    path: &Path,
    want: Option<&HashSet<&str>>,
) -> std::result::Result<(Loaded, Vec<String>), String> {
    let text = fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
    let m = parse_manifest(&text)?;
    let mut objects = BTreeMap::new();
    let mut verified = vec![];
    for (name, (blob, len, crc)) in &m.objects {
        if want.is_some_and(|w| !w.contains(name.as_str())) {
            continue;
        }
        let bpath = store.blob_dir().join(blob);
        let data = fs::read(&bpath).map_err(|e| format!("object '{name}': cannot read {}: {e}", bpath.display()))?;
        if data.len() as u64 != *len {
            return Err(format!(
                "object '{name}': {} has {} bytes, the manifest says {len} (torn)",
                bpath.display(),
                data.len()
            ));
        }
        if crc32fast::hash(&data) != *crc {
            return Err(format!("object '{name}': {} fails its checksum (corrupt)", bpath.display()));
        }
        let lists = decode_lists(&data).map_err(|e| format!("object '{name}': {e}"))?;
        objects.insert(name.clone(), lists);
        verified.push(blob.clone());
    }
    let mut state_dir = None;
    if let Some((dir, files)) = &m.state {
        let d = store.state_dir().join(dir);
        for (f, len, crc) in files {
            let path = d.join(f);
            let meta = fs::metadata(&path).map_err(|e| format!("state file {}: {e}", path.display()))?;
            if meta.len() != *len {
                return Err(format!(
                    "state file {} has {} bytes, the manifest says {len} (torn)",
                    path.display(),
                    meta.len()
                ));
            }
            if let Some(crc) = crc {
                let data = fs::read(&path).map_err(|e| format!("state file {}: {e}", path.display()))?;
                if crc32fast::hash(&data) != *crc {
                    return Err(format!("state file {} fails its checksum (corrupt)", path.display()));
                }
            }
        }
        state_dir = Some((d, files.iter().map(|f| f.0.clone()).collect()));
    }
    Ok((Loaded { epoch: m.epoch, seq: m.seq, objects, state_dir }, verified))
}

/// The newest checkpoint whose manifest and files are intact; each one skipped adds a warning.
/// `Ok(None)` when there is none at all; an error when checkpoints exist and none is intact.
pub(crate) fn load_latest(store: &Store, warnings: &mut Vec<String>) -> Result<Option<Loaded>> {
    let all = manifests(store)?;
    let mut unusable: Vec<PathBuf> = vec![];
    for (epoch, path) in all.iter().rev() {
        match load_manifest(store, path, None) {
            Ok((l, blobs)) => {
                store.intact.lock().extend(blobs);
                // Set aside (not deleted) so that the next checkpoint, which takes their epoch
                // numbers again, and the resuming of subscriptions never read them.
                for p in unusable {
                    let _ = fs::rename(&p, PathBuf::from(format!("{}.unusable", p.display())));
                }
                return Ok(Some(l));
            }
            Err(why) => {
                warnings.push(format!(
                    "checkpoint {epoch} ({}) is unusable: {why}; falling back to the one before",
                    path.display()
                ));
                unusable.push(path.clone());
            }
        }
    }
    if all.is_empty() {
        Ok(None)
    } else {
        Err(Error::new(
            ErrorKind::Io,
            format!("no intact checkpoint in {}: {}", store.cp_dir().display(), warnings.join("; ")),
        ))
    }
}

/// The named objects of checkpoint `epoch` (used to replay a stream's retained outputs).
pub(crate) fn load_objects(store: &Store, epoch: u64, names: &[&str]) -> Result<Option<Loaded>> {
    let path = store.cp_dir().join(format!("MANIFEST-{epoch:020}"));
    if !path.exists() {
        return Ok(None);
    }
    let want: HashSet<&str> = names.iter().copied().collect();
    load_manifest(store, &path, Some(&want))
        .map(|(l, _)| Some(l))
        .map_err(|why| Error::new(ErrorKind::Io, format!("checkpoint {epoch}: {why}")))
}

/// The epochs of the checkpoints on disk, oldest first.
pub(crate) fn epochs(store: &Store) -> Result<Vec<u64>> {
    Ok(manifests(store)?.into_iter().map(|(e, _)| e).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};

    fn batch(n: i64) -> RecordBatch {
        RecordBatch::try_from_iter(vec![
            ("a", std::sync::Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef),
            ("s", std::sync::Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("r{i}")))) as ArrayRef),
        ])
        .unwrap()
    }

    #[test]
    fn lists_round_trip() {
        let lists = vec![vec![batch(3), batch(0)], vec![], vec![batch(5)]];
        let back = decode_lists(&encode_lists(&lists).unwrap()).unwrap();
        assert_eq!(back, lists);
    }

    #[test]
    fn manifest_round_trip_and_checksum() {
        let mut m = Manifest { epoch: 7, seq: 99, objects: BTreeMap::new(), state: None };
        m.objects.insert("strange name \"x\"".into(), ("b1".into(), 12, 0xdeadbeef));
        let t = manifest_text(&m);
        let back = parse_manifest(&t).unwrap();
        assert_eq!((back.epoch, back.seq), (7, 99));
        assert_eq!(back.objects, m.objects);
        assert!(parse_manifest(&t.replace("seq 99", "seq 98")).unwrap_err().contains("checksum"));
        assert!(parse_manifest(&t[..t.len() / 2]).is_err());
    }

    #[test]
    fn log_replays_in_order_and_stops_at_a_torn_tail() {
        let dir = std::env::temp_dir().join(format!("laminar-wal-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut w = LogWriter::create(
            &dir,
            1,
            true,
            Arc::new(Faults::default()),
            Io::new(crate::config::IoBackend::Auto).unwrap(),
        )
        .unwrap();
        let mut buf = vec![];
        encode_record(&mut buf, 1, &Record::Ddl { sql: "CREATE SOURCE s (a BIGINT)".into() }).unwrap();
        encode_record(
            &mut buf,
            2,
            &Record::Batch {
                source: "s".into(),
                position: Some(crate::connector::Position {
                    partition: "f".into(),
                    offset: "4".into(),
                    finished: true,
                }),
                batch: batch(4),
            },
        )
        .unwrap();
        w.append(1, &buf, false).unwrap();
        let intact = buf.len() as u64;
        let mut buf = vec![];
        encode_record(&mut buf, 3, &Record::Watermark { source: "s".into(), us: 5 }).unwrap();
        w.append(3, &buf[..buf.len() - 3], false).unwrap(); // torn
        let mut seen = vec![];
        let mut warnings = vec![];
        let out = replay_log(&dir, 0, Strict, &mut warnings, |seq, r| {
            seen.push((seq, format!("{r:?}").chars().take(5).collect::<String>()));
            Ok(())
        })
        .unwrap();
        assert_eq!((out.last, out.lost), (2, false));
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains(&format!("from byte {intact}")) && warnings[0].contains("never acknowledged"),
            "{warnings:?}"
        );
        // The torn tail is cut off: a later segment after it does not make it look like damage.
        assert_eq!(fs::metadata(segment_path(&dir, 1, true)).unwrap().len(), intact);
        let mut n = 0;
        replay_log(&dir, 1, Strict, &mut warnings, |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1, "records up to `after` are skipped");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    use crate::config::WalRecovery::{Salvage, Strict};

    /// A log directory holding segments of `(first seq, every_seq, records)`, each record a
    /// watermark numbered from the segment's first; the bytes of each segment.
    fn log_dir(name: &str, segs: &[(u64, bool, u64)]) -> (PathBuf, Vec<Vec<u8>>) {
        let dir = std::env::temp_dir().join(format!("laminar-wal-unit-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut all = vec![];
        for &(first, every_seq, n) in segs {
            let mut buf = vec![];
            for seq in first..first + n {
                encode_record(&mut buf, seq, &Record::Watermark { source: "s".into(), us: seq as i64 }).unwrap();
            }
            fs::write(segment_path(&dir, first, every_seq), &buf).unwrap();
            all.push(buf);
        }
        (dir, all)
    }

    fn replay_all(
        dir: &Path,
        after: u64,
        rule: crate::config::WalRecovery,
    ) -> (Result<Replayed>, Vec<u64>, Vec<String>) {
        let mut seen = vec![];
        let mut warnings = vec![];
        let r = replay_log(dir, after, rule, &mut warnings, |seq, _| {
            seen.push(seq);
            Ok(())
        });
        (r, seen, warnings)
    }

    const REC: usize = 8 + 8 + 1 + 4 + 1 + 8; // one watermark record of source "s"

    #[test]
    fn damage_with_intact_records_after_it_is_an_error_or_salvaged() {
        let (dir, segs) = log_dir("mid", &[(1, true, 6)]);
        let path = segment_path(&dir, 1, true);
        let mut bytes = segs[0].clone();
        bytes[2 * REC + 25] ^= 1; // record 3's body
        fs::write(&path, &bytes).unwrap();
        let (r, seen, _) = replay_all(&dir, 0, Strict);
        let e = r.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(
            e.message().contains(&path.display().to_string()) && e.message().contains(&format!("byte {}", 2 * REC)),
            "{e}"
        );
        assert!(
            e.message().contains("1 record (sequence numbers 3 to 3)")
                && e.message().contains("wal_recovery = 'salvage'"),
            "{e}"
        );
        assert_eq!(seen, vec![1, 2], "records before the damage were handed over before it was found");
        let (r, seen, warnings) = replay_all(&dir, 0, Salvage);
        let out = r.unwrap();
        assert_eq!((out.last, out.lost), (6, true));
        assert_eq!(seen, vec![1, 2, 4, 5, 6]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains(&format!("{REC} bytes unreadable")), "{warnings:?}");
        // Damage in records the checkpoint covers loses nothing.
        let (r, seen, warnings) = replay_all(&dir, 4, Strict);
        assert_eq!(r.unwrap().last, 6);
        assert_eq!(seen, vec![5, 6]);
        assert!(warnings.len() == 1 && warnings[0].contains("checkpoint covers"), "{warnings:?}");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_segment_shorter_than_the_next_one_proves_is_damage() {
        // 1..=4 in the first segment, 5..=6 in the second.
        let (dir, _) = log_dir("short", &[(1, true, 4), (5, true, 2)]);
        let path = segment_path(&dir, 1, true);
        fs::write(&path, b"").unwrap();
        let (r, _, _) = replay_all(&dir, 0, Strict);
        let e = r.unwrap_err();
        assert!(e.message().contains("byte 0") && e.message().contains("4 records (sequence numbers 1 to 4)"), "{e}");
        // Covered by the checkpoint: nothing is missing.
        let (r, seen, warnings) = replay_all(&dir, 4, Strict);
        assert_eq!((r.unwrap().last, seen, warnings.len()), (6, vec![5, 6], 0));
        let (r, seen, warnings) = replay_all(&dir, 0, Salvage);
        let out = r.unwrap();
        assert_eq!((out.last, out.lost, seen), (6, true, vec![5, 6]));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        // At durability checkpoint pushes are not logged: gaps between segments are normal.
        let (dir2, _) = log_dir("gaps", &[(1, false, 2), (9, false, 1)]);
        let (r, seen, warnings) = replay_all(&dir2, 0, Strict);
        assert_eq!((r.unwrap().last, seen, warnings.len()), (9, vec![1, 2, 9], 0));
        // A damaged end of an older segment, with numbers missing before the next one.
        let (dir3, segs) = log_dir("older", &[(1, true, 3), (4, true, 1)]);
        fs::write(segment_path(&dir3, 1, true), &segs[0][..2 * REC + 5]).unwrap();
        let (r, _, _) = replay_all(&dir3, 0, Strict);
        let e = r.unwrap_err();
        assert!(
            e.message().contains("not a torn tail") && e.message().contains("1 record (sequence numbers 3 to 3)"),
            "{e}"
        );
        // The first segment starts past what the checkpoint covers: the segment before is gone.
        let (dir4, _) = log_dir("first", &[(5, true, 2)]);
        let (r, _, _) = replay_all(&dir4, 2, Strict);
        let e = r.unwrap_err();
        assert!(
            e.message().contains("the log before this segment is missing")
                && e.message().contains("2 records (sequence numbers 3 to 4)"),
            "{e}"
        );
        let (r, _, _) = replay_all(&dir4, 4, Strict);
        assert_eq!(r.unwrap().last, 6);
        for d in [dir, dir2, dir3, dir4] {
            let _ = fs::remove_dir_all(&d);
        }
    }

    #[test]
    fn a_torn_tail_left_by_an_earlier_crash_is_dropped() {
        // Records 1..=3, then a torn record; the next open started the next segment at 4.
        let (dir, segs) = log_dir("leftover", &[(1, true, 3), (4, true, 0)]);
        let mut bytes = segs[0].clone();
        let mut torn = vec![];
        encode_record(&mut torn, 4, &Record::Watermark { source: "s".into(), us: 4 }).unwrap();
        bytes.extend_from_slice(&torn[..REC - 2]);
        fs::write(segment_path(&dir, 1, true), &bytes).unwrap();
        let (r, seen, warnings) = replay_all(&dir, 0, Strict);
        assert_eq!((r.unwrap().last, seen), (3, vec![1, 2, 3]));
        assert!(warnings.len() == 1 && warnings[0].contains("earlier crash"), "{warnings:?}");
        assert_eq!(fs::metadata(segment_path(&dir, 1, true)).unwrap().len(), 3 * REC as u64);
        // A zero-filled tail (the file grew, its data never reached the disk) is torn too.
        let mut zeros = segs[0].clone();
        zeros.extend_from_slice(&[0; 100]);
        fs::remove_file(segment_path(&dir, 4, true)).unwrap();
        fs::write(segment_path(&dir, 1, true), &zeros).unwrap();
        let (r, seen, warnings) = replay_all(&dir, 0, Strict);
        assert_eq!((r.unwrap().last, seen), (3, vec![1, 2, 3]));
        assert!(
            warnings.len() == 1
                && warnings[0].contains("impossible length (0)")
                && warnings[0].contains("never acknowledged"),
            "{warnings:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn simulated_full_disk_writes_what_fits_then_fails() {
        let dir = std::env::temp_dir().join(format!("laminar-faults-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let faults = Arc::new(Faults::default());
        faults.set_budget(Some(10));
        let mut w = LogWriter::create(&dir, 1, true, faults, Io::Std).unwrap();
        let e = w.append(1, &[0u8; 64], false).unwrap_err();
        assert!(e.message().contains("No space left"), "{e}");
        assert_eq!(fs::metadata(dir.join(format!("{:020}.wal", 1))).unwrap().len(), 10);
        let _ = fs::remove_dir_all(&dir);
    }
}

//! On-disk durability (DESIGN §4): the write-ahead log, checkpoint files and their manifests.
//!
//! ```text
//! <path>/LOCK                          held (flock) while a process has the database open
//! <path>/wal/<first seq>.log           records: [len u32][crc32 u32][seq u64][kind u8][body]
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
//! checkpoint covers all their records, so falling back never loses a logged push.
//!
//! This module knows files and formats; the database (db.rs) decides what goes in them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

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
            IoBackend::IoUring => Self::uring().map_err(|e| Error::not_implemented(format!("io_backend 'io_uring' is not available here: {e}; use 'auto' or 'std'"))),
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
        let write = opcode::Write::new(types::Fd(fd), data.as_ptr(), n as u32).offset(offset).build().flags(squeue::Flags::IO_LINK).user_data(1);
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
        let (Some(w), Some(sr)) = (wrote, synced) else { return Err(std::io::Error::other("io_uring: a completion is missing")) };
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
        for d in [root.to_path_buf(), root.join("wal"), root.join("checkpoints"), root.join("checkpoints").join("blobs"), root.join("checkpoints").join("state")] {
            fs::create_dir_all(&d).map_err(|e| io_err(format!("creating {}", d.display()), e))?;
        }
        let lock_path = root.join("LOCK");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| io_err(format!("opening {}", lock_path.display()), e))?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        let rc = unsafe { libc_flock(std::os::fd::AsRawFd::as_raw_fd(&lock)) };
        if rc != 0 {
            return Err(Error::invalid_state(format!(
                "database '{}' is open in another process (or another Database in this one); close it first",
                root.display()
            )));
        }
        Ok(Store { root: root.to_path_buf(), faults: Arc::new(Faults::default()), lock: parking_lot::Mutex::new(Some(lock)), io: parking_lot::Mutex::new(io), intact: Default::default(), state_files: Default::default(), io_backend })
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
            return Err(Error::invalid_data(format!("truncated: {n} bytes wanted at offset {}, {} left", self.pos, self.data.len() - self.pos)));
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
    /// A pushed batch; `position` is the source's position after it (a connector's offset).
    Batch { source: String, position: Option<u64>, batch: RecordBatch },
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
        Record::Batch { source, position, batch } => {
            body.push(1);
            put_str(&mut body, source);
            body.extend_from_slice(&position.map(|p| p + 1).unwrap_or(0).to_le_bytes());
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
            let p = r.u64()?;
            Record::Batch { source, position: p.checked_sub(1), batch: decode_batch(r.rest())? }
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
    faults: Arc<Faults>,
    io: Io,
}

fn segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v = vec![];
    for e in fs::read_dir(dir).map_err(|e| io_err(format!("listing {}", dir.display()), e))? {
        let e = e.map_err(|e| io_err(format!("listing {}", dir.display()), e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if let Some(first) = name.strip_suffix(".log").and_then(|s| s.parse::<u64>().ok()) {
            v.push((first, e.path()));
        }
    }
    v.sort();
    Ok(v)
}

impl LogWriter {
    /// Starts a new segment whose first record will be `first_seq`.
    pub(crate) fn create(dir: &Path, first_seq: u64, faults: Arc<Faults>, io: Io) -> Result<LogWriter> {
        let path = dir.join(format!("{first_seq:020}.log"));
        let file = OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(|e| io_err(format!("creating {}", path.display()), e))?;
        sync_dir(dir)?;
        Ok(LogWriter { dir: dir.to_path_buf(), file, bytes: 0, faults, io })
    }

    /// Writes `data` (framed records, the first numbered `first_seq`) and waits until it is on
    /// disk; in a new segment when `rotate` (after a checkpoint, so old segments can go) or when
    /// this one is full.
    pub(crate) fn append(&mut self, first_seq: u64, data: &[u8], rotate: bool) -> Result<()> {
        if rotate || self.bytes >= SEGMENT_BYTES {
            let io = std::mem::replace(&mut self.io, Io::Std);
            *self = LogWriter::create(&self.dir, first_seq, self.faults.clone(), io)?;
        }
        let res = self.io.write_sync(&self.faults, &self.file, self.bytes, data);
        res.map_err(|e| io_err(format!("write-ahead log ({})", self.io.name()), e))?;
        self.bytes += data.len() as u64;
        Ok(())
    }
}

/// Calls `f` for every intact record with a sequence number above `after`, in order. A torn or
/// corrupt record ends its segment (the rest of it was never acknowledged) with a warning.
pub(crate) fn replay_log(dir: &Path, after: u64, warnings: &mut Vec<String>, mut f: impl FnMut(u64, Record) -> Result<()>) -> Result<u64> {
    let mut last = after;
    for (_, path) in segments(dir)? {
        let mut data = vec![];
        File::open(&path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io_err(format!("reading {}", path.display()), e))?;
        let mut pos = 0usize;
        while pos < data.len() {
            let bad = |why: &str| format!("{}: {why} at byte {pos}; the rest of this log segment ({} bytes) was never acknowledged and is ignored", path.display(), data.len() - pos);
            if data.len() - pos < 8 {
                warnings.push(bad("a torn record header"));
                break;
            }
            let len = u32::from_le_bytes(data[pos..pos + 4].try_into().expect("4")) as usize;
            let crc = u32::from_le_bytes(data[pos + 4..pos + 8].try_into().expect("4"));
            if data.len() - pos - 8 < len {
                warnings.push(bad("a torn record"));
                break;
            }
            let body = &data[pos + 8..pos + 8 + len];
            if crc32fast::hash(body) != crc {
                warnings.push(bad("a record with a wrong checksum"));
                break;
            }
            let (seq, rec) = decode_record(body).map_err(|e| e.context(format!("{}: record at byte {pos}", path.display())))?;
            pos += 8 + len;
            if seq <= after {
                continue;
            }
            last = last.max(seq);
            f(seq, rec)?;
        }
    }
    Ok(last)
}

/// Deletes the segments every record of which has a sequence number `<= upto` (never the newest).
pub(crate) fn truncate_log(dir: &Path, upto: u64) -> Result<usize> {
    let segs = segments(dir)?;
    let mut removed = 0;
    for w in segs.windows(2) {
        // Segment w[0] holds records w[0].0 .. w[1].0 - 1.
        if w[1].0 > 0 && w[1].0 - 1 <= upto {
            fs::remove_file(&w[0].1).map_err(|e| io_err(format!("removing {}", w[0].1.display()), e))?;
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
    if s.len() % 2 != 0 {
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
            ["state", dir] if dir.len() == 20 && dir.bytes().all(|b| b.is_ascii_digit()) => m.state = Some((dir.to_string(), vec![])),
            ["statefile", name, len, crc] => {
                // RocksDB's own names (000012.sst, MANIFEST-000005, OPTIONS-000007, CURRENT).
                let plain = |n: &String| !n.is_empty() && !n.starts_with('.') && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
                let name = unhex(name).filter(plain).ok_or("a malformed state file name")?;
                let len = len.parse().map_err(|_| "a malformed length")?;
                let crc = if *crc == "-" { None } else { Some(u32::from_str_radix(crc, 16).map_err(|_| "a malformed checksum")?) };
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
    write_atomic(&mut store.io.lock(), &store.faults, &store.cp_dir().join(format!("MANIFEST-{epoch:020}")), text.as_bytes())?;
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
fn checkpoint_state(store: &Store, st: &crate::state_store::StateStore, epoch: u64, stats: &mut CheckpointStats) -> Result<(String, Vec<(String, u64, Option<u32>)>)> {
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
fn load_manifest(store: &Store, path: &Path, want: Option<&HashSet<&str>>) -> std::result::Result<(Loaded, Vec<String>), String> {
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
            return Err(format!("object '{name}': {} has {} bytes, the manifest says {len} (torn)", bpath.display(), data.len()));
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
                return Err(format!("state file {} has {} bytes, the manifest says {len} (torn)", path.display(), meta.len()));
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
                warnings.push(format!("checkpoint {epoch} ({}) is unusable: {why}; falling back to the one before", path.display()));
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
    load_manifest(store, &path, Some(&want)).map(|(l, _)| Some(l)).map_err(|why| Error::new(ErrorKind::Io, format!("checkpoint {epoch}: {why}")))
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
        let mut w = LogWriter::create(&dir, 1, Arc::new(Faults::default()), Io::new(crate::config::IoBackend::Auto).unwrap()).unwrap();
        let mut buf = vec![];
        encode_record(&mut buf, 1, &Record::Ddl { sql: "CREATE SOURCE s (a BIGINT)".into() }).unwrap();
        encode_record(&mut buf, 2, &Record::Batch { source: "s".into(), position: Some(4), batch: batch(4) }).unwrap();
        w.append(1, &buf, false).unwrap();
        let mut buf = vec![];
        encode_record(&mut buf, 3, &Record::Watermark { source: "s".into(), us: 5 }).unwrap();
        w.append(3, &buf[..buf.len() - 3], false).unwrap(); // torn
        let mut seen = vec![];
        let mut warnings = vec![];
        let last = replay_log(&dir, 0, &mut warnings, |seq, r| {
            seen.push((seq, format!("{r:?}").chars().take(5).collect::<String>()));
            Ok(())
        })
        .unwrap();
        assert_eq!(last, 2);
        assert_eq!(seen.iter().map(|s| s.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        let mut n = 0;
        replay_log(&dir, 1, &mut vec![], |_, _| {
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1, "records up to `after` are skipped");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn simulated_full_disk_writes_what_fits_then_fails() {
        let dir = std::env::temp_dir().join(format!("laminar-faults-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let faults = Arc::new(Faults::default());
        faults.set_budget(Some(10));
        let mut w = LogWriter::create(&dir, 1, faults, Io::Std).unwrap();
        let e = w.append(1, &[0u8; 64], false).unwrap_err();
        assert!(e.message().contains("No space left"), "{e}");
        assert_eq!(fs::metadata(dir.join(format!("{:020}.log", 1))).unwrap().len(), 10);
        let _ = fs::remove_dir_all(&dir);
    }
}

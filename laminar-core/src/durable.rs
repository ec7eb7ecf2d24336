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
//! This file (I/O with fault injection, the directory and its lock) and `log.rs`,
//! `checkpoint.rs`, `codec.rs` beside it know files and formats; the database (`db/`) decides
//! what goes in them.

mod checkpoint;
mod codec;
mod log;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::error::{Error, ErrorKind, Result};

pub use checkpoint::CheckpointStats;
pub(crate) use checkpoint::*;
pub(crate) use codec::*;
pub(crate) use log::*;

/// Decodes `b` as a log record body (the fuzz entry point); whether it decoded.
pub(crate) fn decode_log_record(b: &[u8]) -> bool {
    log::decode_record(b).is_ok()
}

/// Parses `body` as a checkpoint manifest with its end line (the checksum) made to hold (the
/// fuzz entry point); whether it parsed.
pub(crate) fn parse_manifest_body(body: &str) -> bool {
    let text = format!("{body}end {:08x}\n", crc32fast::hash(body.as_bytes()));
    checkpoint::parse_manifest(&text).is_ok()
}

/// Writes `segments` as the segments of a log directory (each named by the sequence number its
/// first record claims, kept increasing) and replays them strictly, then with salvage, as opening
/// a database does (the fuzz entry point). Whether the strict replay succeeded.
pub(crate) fn replay_segments(segments: &[Vec<u8>]) -> bool {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "laminar-fuzz-log-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    if fs::create_dir_all(&dir).is_err() {
        return false;
    }
    let mut prev = 0u64;
    for seg in segments {
        let claimed = seg.get(8..16).map_or(0, |b| u64::from_le_bytes(b.try_into().expect("8")));
        let first = claimed.clamp(prev + 1, prev + (1 << 40));
        prev = first;
        if fs::write(log::segment_path(&dir, first, true), seg).is_err() {
            let _ = fs::remove_dir_all(&dir);
            return false;
        }
    }
    let mut warnings = vec![];
    let strict = log::replay_log_with_progress(
        &dir,
        0,
        crate::config::WalRecovery::Strict,
        &mut warnings,
        |_, _| Ok(()),
        |_, _| {},
    )
    .is_ok();
    let _ = log::replay_log_with_progress(
        &dir,
        0,
        crate::config::WalRecovery::Salvage,
        &mut warnings,
        |_, _| Ok(()),
        |_, _| {},
    );
    let _ = fs::remove_dir_all(&dir);
    strict
}

pub(super) const MANIFEST_HEADER: &str = "LAMINARDB CHECKPOINT 1";
/// A log segment is closed and a new one started past this size.
pub(super) const SEGMENT_BYTES: u64 = 64 << 20;

pub(super) fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Io, format!("{what}: {e}"))
}

// ------------------------------------------------------------------ I/O and fault injection

/// Simulated write failures for tests: once `budget` bytes have been written, writes fail with
/// "No space left on device" (a full disk), after writing what still fits (a torn write).
#[derive(Debug)]
pub(crate) struct Faults {
    pub(super) budget: AtomicI64,
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
    pub(super) fn take(&self, n: usize) -> usize {
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
    pub(super) fn uring() -> std::io::Result<Io> {
        Ok(Io::Uring(Box::new(io_uring::IoUring::new(8)?)))
    }
    #[cfg(not(target_os = "linux"))]
    pub(super) fn uring() -> std::io::Result<Io> {
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
    pub(super) fn write_sync(&mut self, faults: &Faults, f: &File, offset: u64, data: &[u8]) -> std::io::Result<()> {
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
pub(super) fn uring_write_sync(
    ring: &mut io_uring::IoUring,
    fd: i32,
    mut offset: u64,
    mut data: &[u8],
) -> std::io::Result<()> {
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

pub(super) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(format!("syncing directory {}", dir.display()), e))
}

/// Writes `data` to `path` through a temporary file, syncs it and renames it into place.
pub(super) fn write_atomic(io: &mut Io, faults: &Faults, path: &Path, data: &[u8]) -> Result<()> {
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
    pub(super) lock: parking_lot::Mutex<Option<DirLock>>,
    /// Checkpoint file I/O (the log has its own).
    pub(super) io: parking_lot::Mutex<Io>,
    /// Blobs known intact: written by this process or verified when a checkpoint was loaded. A
    /// checkpoint reuses only these (never a file it has not checked, which could be corrupt).
    pub(super) intact: parking_lot::Mutex<HashSet<String>>,
    /// The RocksDB state files of the last checkpoint written (to count what a new one adds).
    pub(super) state_files: parking_lot::Mutex<HashSet<String>>,
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
        let lock = DirLock::take(root)?;
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
    pub(super) fn cp_dir(&self) -> PathBuf {
        self.root.join("checkpoints")
    }
    pub(super) fn blob_dir(&self) -> PathBuf {
        self.root.join("checkpoints").join("blobs")
    }
    pub(super) fn state_dir(&self) -> PathBuf {
        self.root.join("checkpoints").join("state")
    }
    /// The RocksDB state backend's live instance (replaced from a checkpoint at every open).
    pub(crate) fn live_state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
}

/// The directories this process holds open (canonical paths): a second `open` of one of them
/// in this process is refused at once, without asking the kernel.
static OPEN_HERE: parking_lot::Mutex<Option<HashSet<PathBuf>>> = parking_lot::Mutex::new(None);

/// The exclusive lock on a database directory: an entry in [`OPEN_HERE`] and a `flock` on its
/// `LOCK` file, both let go on drop.
pub(crate) struct DirLock {
    _file: File,
    _claim: Claim,
}

impl DirLock {
    fn take(root: &Path) -> Result<DirLock> {
        let key = fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf());
        if !OPEN_HERE.lock().get_or_insert_with(HashSet::new).insert(key.clone()) {
            return Err(Error::invalid_state(format!(
                "database '{}' is already open in this process; close it first",
                root.display()
            )));
        }
        // From here on, an early return drops `claim`, which takes the entry out again; the
        // fields of DirLock drop in order, so the flock goes before the entry does.
        let claim = Claim(key);
        let lock_path = root.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| io_err(format!("opening {}", lock_path.display()), e))?;
        // A child the host process forks (any thread, any library) shares the lock's open file
        // description until its exec closes it, so a lock let go a moment ago can still look
        // held: ask again for up to a second before saying another process has it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        loop {
            // SAFETY: flock on a file descriptor we own; no memory is involved.
            let rc = unsafe { libc_flock(std::os::fd::AsRawFd::as_raw_fd(&file)) };
            if rc == 0 {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::invalid_state(format!(
                    "database '{}' is open in another process; close it first",
                    root.display()
                )));
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        Ok(DirLock { _file: file, _claim: claim })
    }
}

/// An entry of [`OPEN_HERE`], taken out again when dropped.
struct Claim(PathBuf);

impl Drop for Claim {
    fn drop(&mut self) {
        if let Some(set) = OPEN_HERE.lock().as_mut() {
            set.remove(&self.0);
        }
    }
}

unsafe extern "C" {
    fn flock(fd: i32, operation: i32) -> i32;
}

/// `flock(fd, LOCK_EX | LOCK_NB)`; released when the file is closed (or the process dies).
pub(super) unsafe fn libc_flock(fd: i32) -> i32 {
    const LOCK_EX: i32 = 2;
    const LOCK_NB: i32 = 4;
    // SAFETY: the caller passes an open descriptor.
    unsafe { flock(fd, LOCK_EX | LOCK_NB) }
}

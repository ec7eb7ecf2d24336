//! The RocksDB state backend (`state_backend = 'rocksdb'`, cargo feature `rocksdb`): one RocksDB
//! instance per database that keyed operators spill their cold state into when their in-memory
//! state passes `state_cache_size` (DESIGN §4: "in-memory hash tables by default, RocksDB for
//! state larger than memory").
//!
//! RocksDB is a cache of spilled state here, never a source of truth of its own: its write-ahead
//! log is off, and at every checkpoint its memtable is flushed and its files are hard-linked into
//! the checkpoint (`checkpoints/state/<epoch>/`, listed in the manifest). Opening a durable
//! database throws the live instance away and starts from the checkpoint's copy; the
//! LaminarDB log replays the rest. An in-memory database spills into a temporary directory that
//! is removed when the database closes.
//!
//! Keys are `[operator id u32][partition u16][window end][window start][group key]` (big-endian,
//! the signs of the window bounds flipped, so one window's groups are one key range); operators
//! take ids from [`StateStore::new_id`], a counter stored in RocksDB itself.

use std::path::{Path, PathBuf};

#[cfg(feature = "rocksdb")]
use crate::error::ErrorKind;
use crate::error::{Error, Result};

/// Length of a [`window_prefix`]; the group key follows it.
pub(crate) const PREFIX_LEN: usize = 22;

/// Builds a key prefix: operator id, partition and window.
pub(crate) fn window_prefix(id: u32, part: u16, window: (i64, i64)) -> Vec<u8> {
    let mut k = Vec::with_capacity(PREFIX_LEN + 32);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&part.to_be_bytes());
    k.extend_from_slice(&((window.0 as u64) ^ (1 << 63)).to_be_bytes());
    k.extend_from_slice(&((window.1 as u64) ^ (1 << 63)).to_be_bytes());
    k
}

/// The window of a key built on [`window_prefix`].
pub(crate) fn key_window(k: &[u8]) -> Option<(i64, i64)> {
    let at = |i: usize| Some((u64::from_be_bytes(k.get(i..i + 8)?.try_into().ok()?) ^ (1 << 63)) as i64);
    Some((at(6)?, at(14)?))
}

/// The smallest key after every key that starts with `prefix`.
#[cfg(feature = "rocksdb")]
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(feature = "rocksdb")]
fn rocks_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io, format!("RocksDB state backend: {what}: {e}"))
}

#[cfg(feature = "rocksdb")]
const NEXT_ID_KEY: &[u8] = b"\xff\xff\xff\xffnext_operator_id";

pub(crate) struct StateStore {
    dir: PathBuf,
    /// An in-memory database's spill directory, removed at drop.
    temporary: bool,
    #[cfg(feature = "rocksdb")]
    db: parking_lot::RwLock<Option<rocksdb::DB>>,
    #[cfg(feature = "rocksdb")]
    ids: parking_lot::Mutex<()>,
}

/// Whether this build has the RocksDB state backend.
pub const AVAILABLE: bool = cfg!(feature = "rocksdb");

fn unavailable() -> Error {
    Error::invalid_argument(
        "state_backend 'rocksdb' is not in this build of LaminarDB: it was built without the cargo feature 'rocksdb' (laminar-core/rocksdb)",
    )
}

impl StateStore {
    /// A store in `dir` (created if missing). Nothing is opened until [`StateStore::reset`].
    pub(crate) fn new(dir: PathBuf, temporary: bool) -> Result<StateStore> {
        if !AVAILABLE {
            return Err(unavailable());
        }
        Ok(StateStore {
            dir,
            temporary,
            #[cfg(feature = "rocksdb")]
            db: parking_lot::RwLock::new(None),
            #[cfg(feature = "rocksdb")]
            ids: parking_lot::Mutex::new(()),
        })
    }

    /// A temporary store for an in-memory database, opened empty.
    pub(crate) fn temporary() -> Result<StateStore> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Process id, a counter and the clock: processes of other containers may share /tmp.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let dir = std::env::temp_dir().join(format!("laminardb-state-{}-{n}-{nanos:x}", std::process::id()));
        if dir.exists() {
            return Err(Error::internal(format!("temporary state directory {} exists already", dir.display())));
        }
        let s = StateStore::new(dir, true)?;
        s.reset(None)?;
        Ok(s)
    }

    #[cfg(all(test, feature = "rocksdb"))]
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(not(feature = "rocksdb"))]
impl StateStore {
    pub(crate) fn reset(&self, _from: Option<(&Path, &[String])>) -> Result<()> {
        Err(unavailable())
    }
    pub(crate) fn new_id(&self) -> Result<u32> {
        Err(unavailable())
    }
    pub(crate) fn put(&self, _items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        Err(unavailable())
    }
    pub(crate) fn get_many(&self, _keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        Err(unavailable())
    }
    pub(crate) fn delete(&self, _keys: &[Vec<u8>]) -> Result<()> {
        Err(unavailable())
    }
    pub(crate) fn scan(
        &self,
        _prefix: &[u8],
        _chunk: usize,
        _f: &mut dyn FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        Err(unavailable())
    }
    pub(crate) fn delete_prefix(&self, _prefix: &[u8]) -> Result<()> {
        Err(unavailable())
    }
    pub(crate) fn checkpoint(&self, _dest: &Path) -> Result<()> {
        Err(unavailable())
    }
    pub(crate) fn bytes(&self) -> Option<u64> {
        None
    }
}

#[cfg(feature = "rocksdb")]
impl StateStore {
    fn options() -> rocksdb::Options {
        let mut o = rocksdb::Options::default();
        o.create_if_missing(true);
        o.set_compression_type(rocksdb::DBCompressionType::None);
        o.set_max_background_jobs(2);
        let mut t = rocksdb::BlockBasedOptions::default();
        // Most probes are for groups that were never spilled: a bloom filter answers them.
        t.set_bloom_filter(10.0, false);
        o.set_block_based_table_factory(&t);
        o
    }

    /// Throws the live instance away and opens a copy of the checkpoint's state in `from` (the
    /// directory and its verified files: SST files hard-linked, the rest copied), or an empty one.
    pub(crate) fn reset(&self, from: Option<(&Path, &[String])>) -> Result<()> {
        let mut db = self.db.write();
        *db = None;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir)
                .map_err(|e| rocks_err(&format!("removing {}", self.dir.display()), e))?;
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| rocks_err(&format!("creating {}", self.dir.display()), e))?;
        if let Some((src, files)) = from {
            for name in files {
                let (path, to) = (src.join(name), self.dir.join(name));
                let r = if name.ends_with(".sst") {
                    std::fs::hard_link(&path, &to).or_else(|_| std::fs::copy(&path, &to).map(|_| ()))
                } else {
                    std::fs::copy(&path, &to).map(|_| ())
                };
                r.map_err(|err| rocks_err(&format!("copying {} to {}", path.display(), to.display()), err))?;
            }
        }
        *db = Some(
            rocksdb::DB::open(&Self::options(), &self.dir)
                .map_err(|e| rocks_err(&format!("opening {}", self.dir.display()), e))?,
        );
        Ok(())
    }

    fn with<T>(&self, f: impl FnOnce(&rocksdb::DB) -> std::result::Result<T, rocksdb::Error>, what: &str) -> Result<T> {
        // Recursive: `scan` holds a read guard while its callback writes.
        let g = self.db.read_recursive();
        let db = g.as_ref().ok_or_else(|| Error::internal("the RocksDB state backend is not open"))?;
        f(db).map_err(|e| rocks_err(what, e))
    }

    fn write_opts() -> rocksdb::WriteOptions {
        let mut w = rocksdb::WriteOptions::default();
        // Durability comes from LaminarDB's own log and checkpoints.
        w.disable_wal(true);
        w
    }

    /// A fresh operator id (a counter kept in the store, so ids restored from a checkpoint are
    /// never handed out again).
    pub(crate) fn new_id(&self) -> Result<u32> {
        let _g = self.ids.lock();
        self.with(
            |db| {
                let next = match db.get(NEXT_ID_KEY)? {
                    Some(v) if v.len() == 4 => u32::from_be_bytes([v[0], v[1], v[2], v[3]]),
                    _ => 1,
                };
                // Ids below 0xffff_ffff: that one's key range holds this counter.
                let after = if next >= u32::MAX - 1 { u32::MAX - 1 } else { next + 1 };
                db.put_opt(NEXT_ID_KEY, after.to_be_bytes(), &Self::write_opts())?;
                Ok(next)
            },
            "allocating an operator id",
        )
    }

    /// Bytes the store holds: its SST files plus its memtables (RocksDB's own figures); None
    /// while it is not open.
    pub(crate) fn bytes(&self) -> Option<u64> {
        let g = self.db.read();
        let db = g.as_ref()?;
        let sst = db.property_int_value("rocksdb.total-sst-files-size").ok().flatten()?;
        let mem = db.property_int_value("rocksdb.cur-size-all-mem-tables").ok().flatten().unwrap_or(0);
        Some(sst + mem)
    }

    pub(crate) fn put(&self, items: Vec<(Vec<u8>, Vec<u8>)>) -> Result<()> {
        let mut b = rocksdb::WriteBatch::default();
        for (k, v) in items {
            b.put(k, v);
        }
        self.with(|db| db.write_opt(b, &Self::write_opts()), "writing spilled state")
    }

    /// The values of `keys` (None: not stored).
    pub(crate) fn get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        self.with(|db| db.multi_get(keys).into_iter().collect(), "reading spilled state")
    }

    pub(crate) fn delete(&self, keys: &[Vec<u8>]) -> Result<()> {
        let mut b = rocksdb::WriteBatch::default();
        for k in keys {
            b.delete(k);
        }
        self.with(|db| db.write_opt(b, &Self::write_opts()), "deleting spilled state")
    }

    /// Calls `f` with the entries under `prefix` in key order, `chunk` at a time.
    pub(crate) fn scan(
        &self,
        prefix: &[u8],
        chunk: usize,
        f: &mut dyn FnMut(Vec<(Vec<u8>, Vec<u8>)>) -> Result<()>,
    ) -> Result<()> {
        let g = self.db.read_recursive();
        let db = g.as_ref().ok_or_else(|| Error::internal("the RocksDB state backend is not open"))?;
        let mut it = db.raw_iterator();
        it.seek(prefix);
        let mut buf = Vec::with_capacity(chunk);
        while it.valid() {
            let (Some(k), Some(v)) = (it.key(), it.value()) else { break };
            if !k.starts_with(prefix) {
                break;
            }
            buf.push((k.to_vec(), v.to_vec()));
            if buf.len() == chunk {
                f(std::mem::replace(&mut buf, Vec::with_capacity(chunk)))?;
            }
            it.next();
        }
        it.status().map_err(|e| rocks_err("scanning spilled state", e))?;
        if !buf.is_empty() {
            f(buf)?;
        }
        Ok(())
    }

    pub(crate) fn delete_prefix(&self, prefix: &[u8]) -> Result<()> {
        let mut b = rocksdb::WriteBatch::default();
        b.delete_range(prefix, &prefix_end(prefix));
        self.with(|db| db.write_opt(b, &Self::write_opts()), "deleting spilled state")
    }

    /// Flushes the memtable and hard-links the instance's files into `dest` (must not exist).
    pub(crate) fn checkpoint(&self, dest: &Path) -> Result<()> {
        self.with(
            |db| rocksdb::checkpoint::Checkpoint::new(db)?.create_checkpoint(dest),
            &format!("checkpointing into {}", dest.display()),
        )
    }
}

impl StateStore {
    /// Closes RocksDB (its lock too); a temporary store's directory is removed. Operators that
    /// still hold the store get errors from then on. Idempotent.
    pub(crate) fn close(&self) {
        #[cfg(feature = "rocksdb")]
        {
            *self.db.write() = None;
        }
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Drop for StateStore {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(all(test, feature = "rocksdb"))]
mod tests {
    use super::*;

    #[test]
    fn prefixes_order_windows_and_bound_ranges() {
        let a = window_prefix(1, 0, (-5, -10));
        let b = window_prefix(1, 0, (3, 1));
        assert!(a < b, "negative window ends sort first");
        assert!(window_prefix(1, 1, (0, 0)) > window_prefix(1, 0, (i64::MAX, 0)));
        assert_eq!(prefix_end(&[1, 2, 0xff]), vec![1, 3]);
        let s = StateStore::temporary().unwrap();
        let p = window_prefix(7, 2, (100, 50));
        let mut items = vec![];
        for i in 0..10u8 {
            let mut k = p.clone();
            k.push(i);
            items.push((k, vec![i]));
        }
        let mut other = window_prefix(7, 2, (101, 50));
        other.push(0);
        items.push((other.clone(), vec![99]));
        s.put(items).unwrap();
        let mut seen = vec![];
        s.scan(&p, 3, &mut |c| {
            assert!(c.len() <= 3);
            seen.extend(c.into_iter().map(|(_, v)| v[0]));
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, (0..10).collect::<Vec<u8>>());
        let mut k3 = p.clone();
        k3.push(3);
        let got = s.get_many(&[k3.clone(), vec![0]]).unwrap();
        assert_eq!(got, vec![Some(vec![3]), None]);
        s.delete(std::slice::from_ref(&k3)).unwrap();
        assert_eq!(s.get_many(&[k3.clone()]).unwrap(), vec![None], "deleted keys are gone");
        assert_eq!(key_window(&k3), Some((100, 50)));
        assert_eq!(key_window(&k3[..20]), None);
        s.delete_prefix(&p).unwrap();
        let mut n = 0;
        s.scan(&window_prefix(7, 2, (0, 0))[..6], 100, &mut |c| {
            n += c.len();
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1, "only the other window's entry is left");
        let (a, b) = (s.new_id().unwrap(), s.new_id().unwrap());
        assert_eq!(b, a + 1);
        let dir = s.dir().to_path_buf();
        drop(s);
        assert!(!dir.exists(), "a temporary store is removed at drop");
    }
}

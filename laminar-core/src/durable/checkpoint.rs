//! Checkpoint files: content-named blobs, the checksummed manifest renamed into place last, the
//! RocksDB state backend's hard-linked copy, and loading the newest usable checkpoint.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self};
use std::path::{Path, PathBuf};

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, ErrorKind, Result};

use super::*;

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
pub(super) struct Manifest {
    pub(super) epoch: u64,
    pub(super) seq: u64,
    /// Object name → (blob name, length, crc).
    pub(super) objects: BTreeMap<String, (String, u64, u32)>,
    /// The RocksDB state backend's checkpoint: its directory under `checkpoints/state/` and its
    /// files (name, length, crc — SST files carry RocksDB's own block checksums and have none).
    pub(super) state: Option<(String, Vec<(String, u64, Option<u32>)>)>,
}

/// A blob's name: its CRC-32, the first 128 bits of its BLAKE3 hash, and its length. An
/// identical object of a later checkpoint is found by this name and not written again, so the
/// name must not collide for different contents (BLAKE3 hashes over 1 GB/s on one core, where
/// the byte-at-a-time FNV-1a used before was several times slower on a large object).
pub(super) fn blob_name(data: &[u8], crc: u32) -> String {
    let h = blake3::hash(data);
    format!("{crc:08x}{}-{}", &h.to_hex()[..32], data.len())
}

pub(super) fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

pub(super) fn unhex(s: &str) -> Option<String> {
    // Damaged text may hold characters of several bytes: slicing it by byte pairs would cut one
    // (a panic the wal fuzz target found).
    if !s.len().is_multiple_of(2) || !s.is_ascii() {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    String::from_utf8(bytes?).ok()
}

pub(super) fn manifest_text(m: &Manifest) -> String {
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

pub(super) fn parse_manifest(text: &str) -> std::result::Result<Manifest, String> {
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

pub(super) fn manifests(store: &Store) -> Result<Vec<(u64, PathBuf)>> {
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
pub(super) fn checkpoint_state(
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
pub(super) fn load_manifest(
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

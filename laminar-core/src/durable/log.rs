//! The write-ahead log: records, their framing and checksums, segments, and replay — which drops
//! a torn tail and refuses (or, told to, salvages) damage that lost acknowledged records.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, ErrorKind, Result};

use super::*;

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
    pub(super) body: Vec<u8>,
    pub(super) crc: crc32fast::Hasher,
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
pub(super) fn encode_record(out: &mut Vec<u8>, seq: u64, rec: &Record) -> Result<()> {
    frame(out, seq, &prepare(rec)?);
    Ok(())
}

pub(super) fn decode_record(body: &[u8]) -> Result<(u64, Record)> {
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
    pub(super) dir: PathBuf,
    pub(super) file: File,
    pub(super) bytes: u64,
    /// Durability `wal`: every sequence number goes into the log (segments named `.wal`).
    pub(super) every_seq: bool,
    pub(super) faults: Arc<Faults>,
    pub(super) io: Io,
}

/// A log segment file: `<first seq>.wal` or `<first seq>.log`.
///
/// A `.wal` segment was written at durability `wal`, where every sequence number from the
/// segment's first on is a record in the log: so the next segment's first number proves which
/// records this one held. A `.log` segment was written at durability `checkpoint` (pushes take
/// numbers but are not logged, so gaps are normal) or by an earlier version; for those only
/// damage inside the file can be detected.
pub(super) struct Segment {
    pub(super) first: u64,
    pub(super) path: PathBuf,
    pub(super) every_seq: bool,
}

pub(super) fn segment_path(dir: &Path, first: u64, every_seq: bool) -> PathBuf {
    dir.join(format!("{first:020}.{}", if every_seq { "wal" } else { "log" }))
}

pub(super) fn segments(dir: &Path) -> Result<Vec<Segment>> {
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
pub(super) enum Bad {
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
    pub(super) fn describe(&self) -> String {
        match self {
            Bad::CutShort { have, need } => format!("a record cut short ({have} of its {need} bytes)"),
            Bad::Length(len) => format!("a record with an impossible length ({len})"),
            Bad::Checksum => "a record that fails its checksum".into(),
        }
    }
}

/// The smallest record: length, checksum, sequence number and kind.
pub(super) const MIN_RECORD: usize = 17;

/// The body length of the intact record at `pos`, or what is wrong with it.
pub(super) fn frame_at(data: &[u8], pos: usize) -> std::result::Result<usize, Bad> {
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
pub(super) enum Scan {
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
pub(super) fn next_intact(data: &[u8], from: usize, above: u64, below: u64) -> Scan {
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
pub(super) fn cut_tail(path: &Path, len: usize) -> Result<()> {
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
pub(super) struct Loss<'a> {
    pub(super) rule: crate::config::WalRecovery,
    pub(super) warnings: &'a mut Vec<String>,
    pub(super) out: &'a mut Replayed,
}

impl Loss<'_> {
    /// `what` happened at byte `at` of `path`; `bytes` of it are unreadable and the records
    /// numbered `seqs` (inclusive; None: unknown) are gone. `exact`: the segment logs every
    /// number, so all of them were records.
    pub(super) fn report(
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
#[cfg(test)]
pub(crate) fn replay_log(
    dir: &Path,
    after: u64,
    rule: crate::config::WalRecovery,
    warnings: &mut Vec<String>,
    f: impl FnMut(u64, Record) -> Result<()>,
) -> Result<Replayed> {
    replay_log_with_progress(dir, after, rule, warnings, f, |_, _| {})
}

/// As `replay_log` (above), calling `progress(bytes_read, bytes_total)` after each record replayed:
/// the bytes of the segments holding records past `after` (the total is known before the first
/// record; the number of records is not).
pub(crate) fn replay_log_with_progress(
    dir: &Path,
    after: u64,
    rule: crate::config::WalRecovery,
    warnings: &mut Vec<String>,
    mut f: impl FnMut(u64, Record) -> Result<()>,
    mut progress: impl FnMut(u64, u64),
) -> Result<Replayed> {
    let segs = segments(dir)?;
    // Every record of a segment is numbered below the next segment's first: a segment is read
    // unless the next one starts at or below `after + 1`.
    let covered = |i: usize| segs.get(i + 1).is_some_and(|n| n.first.saturating_sub(1) <= after);
    let total: u64 =
        (0..segs.len()).filter(|i| !covered(*i)).map(|i| std::fs::metadata(&segs[i].path).map_or(0, |m| m.len())).sum();
    let mut read_before = 0u64;
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
        if covered(i) {
            continue;
        }
        let path = &seg.path;
        let mut data = vec![];
        File::open(path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| io_err(format!("reading {}", path.display()), e))?;
        let seg_base = read_before;
        read_before += data.len() as u64;
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
                    progress(seg_base + pos as u64, total.max(read_before));
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

//! Unit tests of the log and checkpoint formats, including torn and damaged files.

use std::collections::BTreeMap;

use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
use datafusion::arrow::record_batch::RecordBatch;

use super::*;

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
    let mut w =
        LogWriter::create(&dir, 1, true, Arc::new(Faults::default()), Io::new(crate::config::IoBackend::Auto).unwrap())
            .unwrap();
    let mut buf = vec![];
    encode_record(&mut buf, 1, &Record::Ddl { sql: "CREATE SOURCE s (a BIGINT)".into() }).unwrap();
    encode_record(
        &mut buf,
        2,
        &Record::Batch {
            source: "s".into(),
            position: Some(crate::connector::Position { partition: "f".into(), offset: "4".into(), finished: true }),
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

fn replay_all(dir: &Path, after: u64, rule: crate::config::WalRecovery) -> (Result<Replayed>, Vec<u64>, Vec<String>) {
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
        e.message().contains("1 record (sequence numbers 3 to 3)") && e.message().contains("wal_recovery = 'salvage'"),
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

/// Batches of many column types (nulls, strings, timestamps, lists, structs, dictionaries) as
/// the state blobs and log records hold them.
fn varied_batch() -> RecordBatch {
    use datafusion::arrow::array::{
        BooleanArray, DictionaryArray, Float64Array, ListArray, StructArray, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{DataType, Field, Int32Type, Int64Type};
    use std::sync::Arc;
    let n = 20;
    let list = ListArray::from_iter_primitive::<Int64Type, _, _>(
        (0..n).map(|i| if i % 4 == 0 { None } else { Some((0..i % 3).map(|j| Some(j as i64)).collect::<Vec<_>>()) }),
    );
    let fields =
        vec![Arc::new(Field::new("x", DataType::Int64, true)), Arc::new(Field::new("y", DataType::Utf8, true))];
    let st = StructArray::new(
        fields.into(),
        vec![
            Arc::new(Int64Array::from_iter((0..n).map(|i| (i % 5 != 0).then_some(i as i64)))) as ArrayRef,
            Arc::new(StringArray::from_iter((0..n).map(|i| (i % 3 != 0).then(|| format!("v{i}"))))) as ArrayRef,
        ],
        None,
    );
    let dict: DictionaryArray<Int32Type> = (0..n).map(|i| ["a", "bb", "ccc"][i % 3]).collect();
    RecordBatch::try_from_iter(vec![
        ("i", Arc::new(Int64Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(i as i64)))) as ArrayRef),
        ("s", Arc::new(StringArray::from_iter((0..n).map(|i| (i % 2 == 0).then(|| "é".repeat(i))))) as ArrayRef),
        ("f", Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 / 3.0))) as ArrayRef),
        ("b", Arc::new(BooleanArray::from_iter((0..n).map(|i| (i % 5 != 1).then_some(i % 2 == 0)))) as ArrayRef),
        ("t", Arc::new(TimestampMicrosecondArray::from_iter_values((0..n).map(|i| i as i64 * 1_000_000))) as ArrayRef),
        ("l", Arc::new(list) as ArrayRef),
        ("st", Arc::new(st) as ArrayRef),
        ("d", Arc::new(dict) as ArrayRef),
    ])
    .unwrap()
}

/// What the checksums let through is decoded too: a state blob or a log record body whose bytes
/// are damaged but whose checksum would match (written so by a bug, or a collision) must decode
/// to an error, never a panic. Replays `LAMINAR_DECODE_SEED`; `LAMINAR_DECODE_CASES` cases.
#[test]
fn damaged_state_and_log_bodies_decode_to_errors_not_panics() {
    let lists = encode_lists(&[vec![varied_batch(), batch(3)], vec![], vec![varied_batch().slice(5, 7)]]).unwrap();
    let mut records = vec![];
    for rec in [
        Record::Batch { source: "s".into(), position: None, batch: varied_batch() },
        Record::Batch {
            source: "k".into(),
            position: Some(crate::connector::Position { partition: "3".into(), offset: "42".into(), finished: false }),
            batch: batch(4),
        },
        Record::Watermark { source: "s".into(), us: 123 },
        Record::Ddl { sql: "CREATE SOURCE s (x BIGINT)".into() },
        Record::Delete { table: "t".into(), rows: batch(2) },
    ] {
        let mut out = vec![];
        encode_record(&mut out, 9, &rec).unwrap();
        records.push(out[8..].to_vec()); // the body after length and checksum
    }
    crate::util::write_fuzz_seeds("durable", &[0], &records);
    crate::util::write_fuzz_seeds("durable", &[1], std::slice::from_ref(&lists));
    crate::util::decode_damaged("state blobs", &[lists], 3000, |b| {
        let _ = decode_lists(b);
    });
    crate::util::decode_damaged("log record bodies", &records, 3000, |b| {
        let _ = decode_record(b);
    });
}

/// The `wal` fuzz target's entry points: intact segments replay strictly, an intact manifest
/// body parses, and damaged copies of both end in an error or a salvage, never a panic. Its
/// seeds (with `LAMINAR_FUZZ_SEEDS_DIR`): the manifest body, the segments as written, and the
/// segments without their checksums (the form the target checksums itself).
#[test]
fn whole_segments_and_manifests_for_the_wal_fuzz_target() {
    let mut segs = vec![];
    let mut seq = 1;
    for recs in [
        vec![
            Record::Ddl { sql: "CREATE SOURCE s (x BIGINT)".into() },
            Record::Batch { source: "s".into(), position: None, batch: batch(3) },
        ],
        vec![Record::Watermark { source: "s".into(), us: 7 }, Record::Delete { table: "t".into(), rows: batch(1) }],
    ] {
        let mut out = vec![];
        for rec in &recs {
            encode_record(&mut out, seq, rec).unwrap();
            seq += 1;
        }
        segs.push(out);
    }
    assert!(replay_segments(&segs), "intact segments replay strictly");
    let mut torn = segs.clone();
    let cut = torn[1].len() - 3;
    torn[1].truncate(cut);
    let _ = replay_segments(&torn);
    let join = |parts: &[Vec<u8>]| parts.join(&[0xfe, 0xfe][..]);
    assert!(!segs.iter().any(|s| s.windows(2).any(|w| w == [0xfe, 0xfe])), "no marker inside a segment");
    // Without checksums: [len][seq][body] per record.
    let bare: Vec<Vec<u8>> = segs
        .iter()
        .map(|s| {
            let (mut out, mut at) = (vec![], 0);
            while at < s.len() {
                let len = u32::from_le_bytes(s[at..at + 4].try_into().unwrap()) as usize;
                out.extend_from_slice(&s[at..at + 4]);
                out.extend_from_slice(&s[at + 8..at + 8 + len]);
                at += 8 + len;
            }
            out
        })
        .collect();
    let mut objects = BTreeMap::new();
    objects.insert("stream/agg".to_string(), ("0123456789abcdef".to_string(), 1234u64, 0xdead_beefu32));
    let m = Manifest { epoch: 3, seq: 9, objects, state: Some(("00000000000000000003".into(), vec![])) };
    let text = manifest_text(&m);
    let body = &text[..text.rfind("end ").unwrap()];
    assert!(parse_manifest_body(body), "an intact manifest body parses");
    crate::util::write_fuzz_seeds("wal", &[0], &[body.as_bytes().to_vec()]);
    crate::util::write_fuzz_seeds("wal", &[1], &[join(&segs)]);
    crate::util::write_fuzz_seeds("wal", &[2], &[join(&bare)]);
    crate::util::decode_damaged("log segments", &[join(&segs)], 300, |b| {
        crate::fuzz::wal(&[&[1u8][..], b].concat());
    });
    crate::util::decode_damaged("bare log segments", &[join(&bare)], 300, |b| {
        crate::fuzz::wal(&[&[2u8][..], b].concat());
    });
    crate::util::decode_damaged("manifest bodies", &[body.as_bytes().to_vec()], 1000, |b| {
        crate::fuzz::wal(&[&[0u8][..], b].concat());
    });
}

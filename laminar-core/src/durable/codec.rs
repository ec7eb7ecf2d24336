//! Batches as bytes: lists of record batches in Arrow IPC, and the little cursor the log and
//! manifest decoders read with.

use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

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

/// One batch of an IPC stream; damaged bytes are an `INVALID_DATA` error (see
/// [`crate::read_ipc_stream`]).
pub(crate) fn decode_batch(data: &[u8]) -> Result<RecordBatch> {
    crate::ipc::read_ipc_stream(data)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::invalid_data("an encoded batch holds no rows block"))
}

pub(super) struct Cursor<'a> {
    pub(super) data: &'a [u8],
    pub(super) pos: usize,
}

impl<'a> Cursor<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8]> {
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
    pub(super) fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }
    pub(super) fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    pub(super) fn str(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| Error::invalid_data("a name is not UTF-8"))
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        let s = &self.data[self.pos..];
        self.pos = self.data.len();
        s
    }
}

pub(super) fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

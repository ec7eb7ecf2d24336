//! Reading Arrow IPC stream bytes that may be damaged. arrow-rs allocates each message's
//! metadata and body at the lengths the bytes claim (`MutableBuffer::from_len_zeroed` of the
//! flatbuffer's `bodyLength`), so a damaged length asks for petabytes and aborts the process —
//! for an embedded library, its host; and its reader slices buffers at the offsets the bytes
//! claim before it validates them, which panics. [`read_ipc_stream`] checks the framing first
//! and catches those panics. The durable codec (WAL records, checkpoint blobs) and the Node
//! package (IPC bytes from JavaScript) read IPC through it.

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};

/// The batches of the IPC stream `data`. Damaged bytes are an `INVALID_DATA` error, never an
/// allocation of what a damaged length claims or a panic.
pub fn read_ipc_stream(data: &[u8]) -> Result<Vec<RecordBatch>> {
    check_ipc_stream(data)?;
    let read = || -> Result<Vec<RecordBatch>> {
        Ok(StreamReader::try_new(std::io::Cursor::new(data), None)?.collect::<std::result::Result<_, _>>()?)
    };
    match crate::panic_guard::caught(|| std::panic::catch_unwind(read)) {
        Ok(r) => r,
        Err(p) => Err(Error::invalid_data(format!("a damaged Arrow IPC stream: {}", crate::panic_guard::message(&*p)))),
    }
}

/// Checks that every message of the IPC stream `data` (continuation marker or not, then the
/// metadata length, the `Message` flatbuffer, the body) lies within `data`, so that reading it
/// allocates no more than `data` holds. The content is left to arrow-rs, which validates it.
pub(crate) fn check_ipc_stream(data: &[u8]) -> Result<()> {
    let bad = |at: usize, what: String| Error::invalid_data(format!("Arrow IPC stream, byte {at}: {what}"));
    let mut pos = 0usize;
    while pos < data.len() {
        let word = |at: usize| -> Result<u32> {
            data.get(at..at + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or_else(|| bad(at, "the stream ends inside a message length".into()))
        };
        let mut len = word(pos)?;
        pos += 4;
        if len == 0xFFFF_FFFF {
            len = word(pos)?;
            pos += 4;
        }
        if len == 0 {
            return Ok(()); // end of stream
        }
        let len = len as usize;
        if len > (i32::MAX as usize) || len > data.len() - pos {
            return Err(bad(
                pos,
                format!("a message's metadata of {len} bytes runs past the stream's {} bytes", data.len()),
            ));
        }
        let msg = datafusion::arrow::ipc::root_as_message(&data[pos..pos + len])
            .map_err(|e| bad(pos, format!("a message's metadata is not a valid flatbuffer: {e}")))?;
        pos += len;
        let body = msg.bodyLength();
        if body < 0 || body as u64 > (data.len() - pos) as u64 {
            return Err(bad(
                pos,
                format!("a message body of {body} bytes runs past the stream's {} bytes", data.len()),
            ));
        }
        pos += body as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{ArrayRef, Int64Array};
    use datafusion::arrow::ipc::writer::StreamWriter;
    use datafusion::arrow::record_batch::RecordBatch;

    use super::check_ipc_stream;

    fn stream() -> Vec<u8> {
        let b =
            RecordBatch::try_from_iter(vec![("x", Arc::new(Int64Array::from_iter_values(0..10)) as ArrayRef)]).unwrap();
        let mut out = vec![];
        let mut w = StreamWriter::try_new(&mut out, &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
        drop(w);
        out
    }

    #[test]
    fn a_whole_stream_passes_and_lengths_past_its_end_do_not() {
        let s = stream();
        check_ipc_stream(&s).unwrap();
        check_ipc_stream(&[]).unwrap();
        // Cut anywhere inside: some message runs past the end (or its length is cut).
        for cut in [3, 7, 9, s.len() / 2, s.len() - 9] {
            let e = check_ipc_stream(&s[..cut]).unwrap_err();
            assert!(e.message().contains("Arrow IPC stream, byte"), "{e}");
        }
        // A metadata length of 2 GiB - 1 after the continuation marker.
        let mut big = s.clone();
        big[4..8].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
        assert!(check_ipc_stream(&big).unwrap_err().message().contains("metadata of 2147483647 bytes"));
    }
}

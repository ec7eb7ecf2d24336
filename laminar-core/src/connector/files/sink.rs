//! The `FILES` sink: exactly-once files. Results are written to a staging directory inside the
//! sink's directory (`.laminar-staging/<sink>/`, hidden from readers that skip names starting with
//! `.`, as DuckDB globs, pyarrow and Spark do); at a checkpoint the open file is finished and
//! fsynced, and its name goes into the checkpoint; once the checkpoint is durable the file is
//! renamed into the directory as `part-<epoch>-<run>-<n>.<ext>`. A rename is atomic, so a reader
//! sees whole files only, and each epoch's results once: after a crash the restored checkpoint's
//! files are renamed (if they were not yet) and every later staged file is deleted — the replay
//! writes those results again.

use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use super::format::FileWriter;
use super::{Format, io_error, split_path};
use crate::connector::{Options, Sink};
use crate::error::{Error, ErrorKind, Result, clip};

pub(crate) struct FilesSink {
    path: String,
    dir: PathBuf,
    staging: PathBuf,
    format: Format,
    /// Distinguishes this process's files from those of earlier runs with the same epochs.
    run: String,
    /// The file being written: its name (the same in staging and, once committed, in `dir`).
    current: Option<(String, FileWriter)>,
    /// Finished, fsynced and not yet committed files.
    prepared: Vec<String>,
    files: u64,
}

impl FilesSink {
    /// A sink of results of `_schema` (each file takes the schema of the batches written to it).
    pub(crate) fn new(sink: &str, _schema: SchemaRef, mut o: Options) -> Result<FilesSink> {
        let path = o.required("path")?;
        let format = Format::from_options(&mut o)?;
        o.finish()?;
        let (dir, pattern) = split_path(&path);
        if pattern.is_some() {
            return Err(Error::invalid_argument(format!(
                "FILES sink '{sink}': path '{}' must be a directory, not a pattern",
                clip(&path)
            )));
        }
        let staging = super::staging_dir(&dir, sink);
        std::fs::create_dir_all(&staging).map_err(|e| io_error("cannot create the directory", &staging, e))?;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let run = format!("{:012x}", (nanos as u64 ^ ((std::process::id() as u64) << 40)) & 0xffff_ffff_ffff);
        Ok(FilesSink { path, dir, staging, format, run, current: None, prepared: vec![], files: 0 })
    }

    fn finish_current(&mut self) -> Result<()> {
        if let Some((name, w)) = self.current.take() {
            w.finish(&self.staging.join(&name))?;
            self.prepared.push(name);
        }
        Ok(())
    }

    fn publish(&self, name: &str) -> Result<()> {
        let (from, to) = (self.staging.join(name), self.dir.join(name));
        match std::fs::rename(&from, &to) {
            Ok(()) => Ok(()),
            // Committed before a crash: renaming again is a no-op.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && to.exists() => Ok(()),
            Err(e) => Err(io_error("cannot move the finished file", &from, e)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| io_error("cannot sync the directory", dir, e))
}

fn names(committable: &[u8]) -> Result<Vec<String>> {
    let s = std::str::from_utf8(committable)
        .map_err(|_| Error::invalid_data("a FILES sink's committable in the checkpoint is not UTF-8"))?;
    Ok(s.lines().filter(|l| !l.is_empty()).map(str::to_string).collect())
}

impl Sink for FilesSink {
    fn describe(&self) -> String {
        format!("FILES '{}' ({})", clip(&self.path), self.format.name())
    }

    fn write(&mut self, epoch: u64, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.current.is_none() {
            self.files += 1;
            let name = format!("part-{epoch:010}-{}-{:05}.{}", self.run, self.files, self.format.extensions()[0]);
            let w = FileWriter::create(self.format, &self.staging.join(&name), &batch.schema())?;
            self.current = Some((name, w));
        }
        let (_, w) = self.current.as_mut().expect("opened");
        w.write(batch)
    }

    fn prepare_commit(&mut self, _epoch: u64) -> Result<Vec<u8>> {
        self.finish_current()?;
        if !self.prepared.is_empty() {
            sync_dir(&self.staging)?;
        }
        Ok(self.prepared.iter().map(|n| format!("{n}\n")).collect::<String>().into_bytes())
    }

    fn commit(&mut self, _epoch: u64, committable: &[u8]) -> Result<()> {
        let names = names(committable)?;
        for n in &names {
            self.publish(n)?;
        }
        if !names.is_empty() {
            sync_dir(&self.dir)?;
        }
        self.prepared.retain(|p| !names.contains(p));
        Ok(())
    }

    fn recover(&mut self, restored: Option<&[u8]>) -> Result<()> {
        self.current = None;
        self.prepared.clear();
        let keep = match restored {
            Some(c) => names(c)?,
            None => vec![],
        };
        for n in &keep {
            self.publish(n).map_err(|e| {
                Error::new(ErrorKind::Io, format!("{} (a file of the restored checkpoint is missing)", e.message()))
            })?;
        }
        self.abort()?;
        sync_dir(&self.dir)
    }

    fn abort(&mut self) -> Result<()> {
        self.current = None;
        self.prepared.clear();
        super::clear_staging(&self.staging)
    }
}

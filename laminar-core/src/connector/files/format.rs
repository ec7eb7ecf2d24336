//! Decoding a file into the source's columns, and the writers of a sink's files. Whole batches
//! are decoded by Arrow's own readers (arrow-csv, arrow-json, parquet); columns are matched by
//! name (CSV without a header: by position), extra columns are ignored, and the declared types
//! apply (CSV and JSON values are parsed as the declared type).

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, Write};
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;

use super::{Format, io_error};
use crate::error::{Error, Result, clip};

/// Rows per batch read.
pub(super) const BATCH_ROWS: usize = 8192;

pub(super) type Batches = Box<dyn Iterator<Item = Result<RecordBatch>> + Send>;

/// Opens `path` and returns its batches with the columns of `schema` (by name), still to be
/// conformed to the source's types. A missing column is an error naming the file.
pub(super) fn read(format: Format, path: &Path, schema: &SchemaRef) -> Result<Batches> {
    let file = File::open(path).map_err(|e| io_error("cannot open", path, e))?;
    let name = path.display().to_string();
    let decode = move |e: String| Error::invalid_data(format!("file '{}': {}", clip(&name), e));
    match format {
        Format::Parquet => {
            use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
            let b = ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| decode(e.to_string()))?;
            let file_schema = b.schema().clone();
            let cols = project(&file_schema, schema, &decode)?;
            let mask = parquet::arrow::ProjectionMask::roots(b.parquet_schema(), cols.clone());
            let reader =
                b.with_batch_size(BATCH_ROWS).with_projection(mask).build().map_err(|e| decode(e.to_string()))?;
            // The projected batch keeps the file's column order: reorder by name.
            let want: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
            Ok(Box::new(reader.map(move |r| {
                let b = r.map_err(|e| decode(e.to_string()))?;
                let idx: Vec<usize> = want.iter().map(|n| b.schema().index_of(n).expect("projected")).collect();
                Ok(b.project(&idx)?)
            })))
        }
        Format::Csv { delimiter, header } => {
            use datafusion::arrow::csv::ReaderBuilder;
            use datafusion::arrow::csv::reader::Format as CsvFormat;
            let mut file = file;
            // The file's columns: its header names typed as declared (others as text, dropped),
            // or, without a header, the declared columns by position.
            let file_schema: SchemaRef = if header {
                let (found, _) = CsvFormat::default()
                    .with_header(true)
                    .with_delimiter(delimiter)
                    .infer_schema(&mut file, Some(0))
                    .map_err(|e| decode(e.to_string()))?;
                file.rewind().map_err(|e| io_error("cannot read", path, e))?;
                Arc::new(Schema::new(
                    found
                        .fields()
                        .iter()
                        .map(|f| match schema.field_with_name(f.name()) {
                            Ok(d) => Field::new(f.name(), d.data_type().clone(), true),
                            Err(_) => Field::new(f.name(), datafusion::arrow::datatypes::DataType::Utf8, true),
                        })
                        .collect::<Vec<_>>(),
                ))
            } else {
                Arc::new(Schema::new(
                    schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
                ))
            };
            let cols = project(&file_schema, schema, &decode)?;
            let reader = ReaderBuilder::new(file_schema)
                .with_header(header)
                .with_delimiter(delimiter)
                .with_batch_size(BATCH_ROWS)
                .with_projection(cols)
                .build(BufReader::new(file))
                .map_err(|e| decode(e.to_string()))?;
            Ok(Box::new(reader.map(move |r| r.map_err(|e| decode(e.to_string())))))
        }
        Format::Json => {
            use datafusion::arrow::json::ReaderBuilder;
            let nullable = Arc::new(Schema::new(
                schema.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect::<Vec<_>>(),
            ));
            let reader = ReaderBuilder::new(nullable)
                .with_batch_size(BATCH_ROWS)
                .build(BufReader::new(file))
                .map_err(|e| decode(e.to_string()))?;
            Ok(Box::new(reader.map(move |r| r.map_err(|e| decode(e.to_string())))))
        }
    }
}

/// Indices in `file` of the columns of `schema`, by name.
fn project(file: &Schema, schema: &SchemaRef, decode: &dyn Fn(String) -> Error) -> Result<Vec<usize>> {
    schema
        .fields()
        .iter()
        .map(|f| {
            file.index_of(f.name()).map_err(|_| {
                let have: Vec<&str> = file.fields().iter().map(|f| f.name().as_str()).collect();
                decode(format!("no column '{}' (the file has: {})", f.name(), clip(&have.join(", "))))
            })
        })
        .collect()
}

/// The writer of one file of a sink.
pub(super) enum FileWriter {
    Parquet(parquet::arrow::ArrowWriter<File>),
    Csv(datafusion::arrow::csv::Writer<BufWriter<File>>),
    Json(datafusion::arrow::json::LineDelimitedWriter<BufWriter<File>>),
}

impl FileWriter {
    pub(super) fn create(format: Format, path: &Path, schema: &SchemaRef) -> Result<FileWriter> {
        let file = File::create(path).map_err(|e| io_error("cannot create", path, e))?;
        Ok(match format {
            Format::Parquet => {
                let props = parquet::file::properties::WriterProperties::builder()
                    .set_compression(parquet::basic::Compression::SNAPPY)
                    .build();
                FileWriter::Parquet(
                    parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(props))
                        .map_err(|e| Error::internal(format!("parquet writer: {e}")))?,
                )
            }
            Format::Csv { delimiter, header } => FileWriter::Csv(
                datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(header)
                    .with_delimiter(delimiter)
                    .build(BufWriter::new(file)),
            ),
            Format::Json => FileWriter::Json(datafusion::arrow::json::LineDelimitedWriter::new(BufWriter::new(file))),
        })
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        match self {
            FileWriter::Parquet(w) => w.write(batch).map_err(|e| Error::new(crate::ErrorKind::Io, e.to_string())),
            FileWriter::Csv(w) => Ok(w.write(batch)?),
            FileWriter::Json(w) => Ok(w.write(batch)?),
        }
    }

    /// Finishes the file and makes it durable (fsync).
    pub(super) fn finish(self, path: &Path) -> Result<()> {
        let io = |e: std::io::Error| io_error("cannot write", path, e);
        let file = match self {
            FileWriter::Parquet(w) => {
                w.into_inner().map_err(|e| Error::new(crate::ErrorKind::Io, format!("'{}': {e}", path.display())))?
            }
            FileWriter::Csv(w) => w.into_inner().into_inner().map_err(|e| io(e.into_error()))?,
            FileWriter::Json(mut w) => {
                w.finish()?;
                w.into_inner().into_inner().map_err(|e| io(e.into_error()))?
            }
        };
        let mut file = file;
        file.flush().map_err(io)?;
        file.sync_all().map_err(io)
    }
}

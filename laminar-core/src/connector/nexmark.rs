//! The `NEXMARK` source: the built-in Nexmark generator (`crate::nexmark`) behind the source
//! interface. One partition (`"0"`) whose position is the next event number; it generates the
//! events of one kind at full speed (event time follows `rate`), then ends the input.
//!
//! | option | meaning |
//! |---|---|
//! | `kind` | `person`, `auction` or `bid` (default: the source's name) |
//! | `events` | events of every kind to generate (default 1,000,000) |
//! | `rate` | events per second of event time (default 10,000,000) |
//! | `seed` | the generator's seed (default 0) |
//! | `batch` | events per batch (default 8192) |
//! | `base_time_ms` | event time of the first event, epoch milliseconds |

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;

use crate::connector::{Options, Poll, Position, Positions, SourceReader};
use crate::error::{Error, Result, clip};
use crate::nexmark::{EventKind, NexmarkConfig, NexmarkGenerator};
use crate::runtime::ingest::conform;

pub(crate) struct NexmarkSource {
    kind: EventKind,
    events: u64,
    batch: u64,
    /// The generator's columns, in the order the source declares them.
    cols: Vec<usize>,
    generator: NexmarkGenerator,
    next: u64,
}

/// The single partition's name.
const PARTITION: &str = "0";

impl NexmarkSource {
    pub(crate) fn new(name: &str, schema: &SchemaRef, mut o: Options) -> Result<NexmarkSource> {
        let mut num = |k: &'static str, default: u64| -> Result<u64> {
            match o.get(k) {
                None => Ok(default),
                Some(v) => v.trim().parse::<u64>().map_err(|_| {
                    Error::invalid_argument(format!(
                        "NEXMARK option {k}: expected a non-negative integer, got '{}'",
                        clip(&v)
                    ))
                }),
            }
        };
        let events = num("events", 1_000_000)?;
        let rate = num("rate", 10_000_000)?;
        let batch = num("batch", 8192)?;
        let seed = num("seed", 0)?;
        if rate == 0 || batch == 0 {
            return Err(Error::invalid_argument("NEXMARK options rate and batch must be positive"));
        }
        let kind_name = o.get("kind").unwrap_or_else(|| name.to_ascii_lowercase());
        let kind = match kind_name.as_str() {
            "person" => EventKind::Person,
            "auction" => EventKind::Auction,
            "bid" => EventKind::Bid,
            k => {
                return Err(Error::invalid_argument(format!(
                    "NEXMARK source '{name}': kind '{}' is not person, auction or bid (set WITH (kind = 'bid') or name the source after its kind)",
                    clip(k)
                )));
            }
        };
        let mut config = NexmarkConfig { first_event_rate: rate, seed, ..Default::default() };
        if let Some(b) = o.get("base_time_ms") {
            config.base_time_ms = b.trim().parse().map_err(|_| {
                Error::invalid_argument(format!(
                    "NEXMARK option base_time_ms: expected epoch milliseconds, got '{}'",
                    clip(&b)
                ))
            })?;
        }
        o.finish()?;
        // The declared columns must accept the generator's (checked on an empty batch, once).
        let generated = crate::nexmark::schema_of(kind);
        let cols: Vec<usize> = schema.fields().iter().filter_map(|f| generated.index_of(f.name()).ok()).collect();
        let sample = RecordBatch::new_empty(generated.clone()).project(&cols)?;
        conform("nexmark", schema, &sample).map_err(|e| {
            Error::plan(format!(
                "the columns of a NEXMARK source must match the generator's ({}): {generated}",
                e.message()
            ))
        })?;
        Ok(NexmarkSource { kind, events, batch, cols, generator: NexmarkGenerator::new(config), next: 0 })
    }
}

impl SourceReader for NexmarkSource {
    fn describe(&self) -> String {
        format!("NEXMARK {:?}", self.kind).to_ascii_uppercase()
    }

    fn open(&mut self, positions: &Positions) -> Result<()> {
        if let Some(p) = positions.get(PARTITION) {
            self.next =
                p.parse().map_err(|_| Error::invalid_data(format!("NEXMARK: bad recorded position '{}'", clip(p))))?;
        }
        Ok(())
    }

    fn poll(&mut self) -> Result<Poll> {
        if self.next >= self.events {
            return Ok(Poll::End);
        }
        let n = self.batch.min(self.events - self.next);
        let b = self.generator.generate_only(self.next, n, Some(self.kind))?;
        let batch = b.take(self.kind).project(&self.cols)?;
        self.next += n;
        // The position is the next event number: recovery resumes there.
        let finished = self.next >= self.events;
        Ok(Poll::Data(batch, Position { partition: PARTITION.into(), offset: self.next.to_string(), finished }))
    }
}

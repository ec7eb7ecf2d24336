//! A deterministic Nexmark event generator (NEXMARK.md §2): person, auction and bid events as
//! Arrow batches for the three sources `person`, `auction` and `bid`.
//!
//! Event `n` (0-based) is a person when `n mod 50 == 0`, an auction when it is 1–3 and a bid
//! otherwise (the 1:3:46 mix); its event time is `base_time + floor(n × inter_event_delay_µs /
//! 1000)` ms with `inter_event_delay_µs = 10⁶ / first_event_rate × num_generators`. Ids, hot
//! keys and every random field depend only on the seed and `n` (each event draws from its own
//! SplitMix64 stream), so any range of events can be generated independently and in any order.
//!
//! `CREATE SOURCE bid (…) FROM NEXMARK WITH (events = '1000000', rate = '10000')` feeds a source
//! from this generator (see `Database::execute`); `examples/nexmark.rs` is the benchmark runner.

use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{ArrayRef, Int64Array, StringBuilder, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const TOTAL_PROPORTION: u64 = 50;
/// First person id and first auction id.
pub const FIRST_PERSON_ID: i64 = 1000;
pub const FIRST_AUCTION_ID: i64 = 1000;
/// Categories are 10–14.
pub const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: u64 = 5;
const HOT_SELLER_RATIO: u64 = 100;
const HOT_AUCTION_RATIO: u64 = 100;
const HOT_BIDDER_RATIO: u64 = 100;
const HOT_CHANNELS: [(&str, &str); 4] = [
    ("Google", "https://www.nexmark.com/googl/item.htm?query=1"),
    ("Facebook", "https://www.nexmark.com/meta/item.htm?query=1"),
    ("Baidu", "https://www.nexmark.com/baidu/item.htm?query=1"),
    ("Apple", "https://www.nexmark.com/aapl/item.htm?query=1"),
];
const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const US_CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];

/// Generator settings (the defaults of every published run, at a configurable rate).
#[derive(Debug, Clone)]
pub struct NexmarkConfig {
    /// Events per second of *event time* (not of emission). Flink's V1 suite: 10,000,000.
    pub first_event_rate: u64,
    pub num_generators: u64,
    /// Event time of event 0, epoch milliseconds.
    pub base_time_ms: i64,
    pub seed: u64,
    /// People among which non-hot sellers and bidders are drawn (`numActivePeople`).
    pub num_active_people: u64,
    /// Auctions among which non-hot bids are drawn (`numInFlightAuctions`).
    pub num_in_flight_auctions: u64,
    /// 1 in `hot_*_ratio` events is *not* hot: 4 → 75 % hot sellers and bidders, 2 → 50 % hot auctions.
    pub hot_seller_ratio: u64,
    pub hot_auction_ratio: u64,
    pub hot_bidder_ratio: u64,
    /// Average sizes the `extra` column pads events to (bytes), ±20 %.
    pub avg_person_bytes: usize,
    pub avg_auction_bytes: usize,
    pub avg_bid_bytes: usize,
}

impl Default for NexmarkConfig {
    fn default() -> Self {
        NexmarkConfig {
            first_event_rate: 10_000_000,
            num_generators: 1,
            base_time_ms: 1_700_000_000_000,
            seed: 0,
            num_active_people: 1000,
            num_in_flight_auctions: 100,
            hot_seller_ratio: 4,
            hot_auction_ratio: 2,
            hot_bidder_ratio: 4,
            avg_person_bytes: 200,
            avg_auction_bytes: 500,
            avg_bid_bytes: 100,
        }
    }
}

/// What event `n` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Person,
    Auction,
    Bid,
}

/// The kind of event `n`.
pub fn kind_of(n: u64) -> EventKind {
    match n % TOTAL_PROPORTION {
        r if r < PERSON_PROPORTION => EventKind::Person,
        r if r < PERSON_PROPORTION + AUCTION_PROPORTION => EventKind::Auction,
        _ => EventKind::Bid,
    }
}

/// People generated before event `n`.
fn people_before(n: u64) -> u64 {
    (n / TOTAL_PROPORTION) * PERSON_PROPORTION + (n % TOTAL_PROPORTION).min(PERSON_PROPORTION)
}

/// Auctions generated before event `n`.
fn auctions_before(n: u64) -> u64 {
    let r = n % TOTAL_PROPORTION;
    (n / TOTAL_PROPORTION) * AUCTION_PROPORTION + r.saturating_sub(PERSON_PROPORTION).min(AUCTION_PROPORTION)
}

/// SplitMix64: the generator inside Java's SplittableRandom; one stream per event.
struct Rng(u64);

impl Rng {
    fn for_event(seed: u64, n: u64) -> Rng {
        let mut r = Rng(seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        r.next_u64();
        r
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn letters(&mut self, min: u64, max: u64) -> String {
        let len = min + self.below(max - min + 1);
        (0..len).map(|_| (b'a' + self.below(26) as u8) as char).collect()
    }
}

/// `round(10^(U[0,1)×6) × 100)`: log-uniform cents between 100 and 100,000,000.
fn price(r: &mut Rng) -> i64 {
    (10f64.powf(r.unit() * 6.0) * 100.0).round() as i64
}

/// One fixed 1 MiB random string the `extra` columns are sliced from.
fn extra_source() -> &'static str {
    static S: OnceLock<String> = OnceLock::new();
    S.get_or_init(|| {
        let mut r = Rng(0x6E65_786D_6172_6B21);
        (0..1 << 20).map(|_| (b'a' + r.below(26) as u8) as char).collect()
    })
}

fn extra(r: &mut Rng, current: usize, avg: usize) -> &'static str {
    let target = (avg as f64 * (0.8 + 0.4 * r.unit())) as usize;
    let len = target.saturating_sub(current);
    let src = extra_source();
    let start = r.below((src.len() - len.min(src.len())) as u64 + 1) as usize;
    &src[start..start + len.min(src.len())]
}

/// The schemas of the three sources (NEXMARK.md §1, snake_case, times in milliseconds).
pub fn person_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("email_address", DataType::Utf8, false),
        Field::new("credit_card", DataType::Utf8, false),
        Field::new("city", DataType::Utf8, false),
        Field::new("state", DataType::Utf8, false),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

pub fn auction_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("item_name", DataType::Utf8, false),
        Field::new("description", DataType::Utf8, false),
        Field::new("initial_bid", DataType::Int64, false),
        Field::new("reserve", DataType::Int64, false),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("expires", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("seller", DataType::Int64, false),
        Field::new("category", DataType::Int64, false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

pub fn bid_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("auction", DataType::Int64, false),
        Field::new("bidder", DataType::Int64, false),
        Field::new("price", DataType::Int64, false),
        Field::new("channel", DataType::Utf8, false),
        Field::new("url", DataType::Utf8, false),
        Field::new("date_time", DataType::Timestamp(TimeUnit::Millisecond, None), false),
        Field::new("extra", DataType::Utf8, false),
    ]))
}

/// The schema of the source holding events of `kind`.
pub fn schema_of(kind: EventKind) -> SchemaRef {
    match kind {
        EventKind::Person => person_schema(),
        EventKind::Auction => auction_schema(),
        EventKind::Bid => bid_schema(),
    }
}

/// The events of a range, one batch per source (a batch may have no rows).
#[derive(Debug, Clone)]
pub struct NexmarkBatches {
    pub person: RecordBatch,
    pub auction: RecordBatch,
    pub bid: RecordBatch,
}

impl NexmarkBatches {
    /// The batch of one kind.
    pub fn take(self, kind: EventKind) -> RecordBatch {
        match kind {
            EventKind::Person => self.person,
            EventKind::Auction => self.auction,
            EventKind::Bid => self.bid,
        }
    }
}

/// Generates Nexmark events.
#[derive(Debug, Clone)]
pub struct NexmarkGenerator {
    config: NexmarkConfig,
}

impl NexmarkGenerator {
    pub fn new(config: NexmarkConfig) -> Self {
        NexmarkGenerator { config }
    }

    pub fn config(&self) -> &NexmarkConfig {
        &self.config
    }

    /// Event time of event `n`, epoch milliseconds.
    pub fn event_time_ms(&self, n: u64) -> i64 {
        let delay_us = 1e6 / self.config.first_event_rate as f64 * self.config.num_generators as f64;
        self.config.base_time_ms + (n as f64 * delay_us / 1000.0).floor() as i64
    }

    /// A person or bidder drawn among the active people, plus up to 10 lead ids.
    fn active_person(&self, r: &mut Rng, n: u64) -> i64 {
        let people = people_before(n).max(1);
        let back = r.below(self.config.num_active_people.min(people));
        let lead = r.below(10);
        FIRST_PERSON_ID + (people - 1 - back + lead) as i64
    }

    /// Generates events `[first, first + count)`.
    pub fn generate(&self, first: u64, count: u64) -> Result<NexmarkBatches> {
        self.generate_only(first, count, None)
    }

    /// Like [`NexmarkGenerator::generate`], building only the events of `only` (the other
    /// batches come back empty); the events built are the same as in a full generation.
    pub fn generate_only(&self, first: u64, count: u64, only: Option<EventKind>) -> Result<NexmarkBatches> {
        let c = &self.config;
        if c.first_event_rate == 0 {
            return Err(crate::error::Error::invalid_argument("the Nexmark event rate must be positive"));
        }
        let mut p = PersonCols::default();
        let mut a = AuctionCols::default();
        let mut b = BidCols::default();
        // Event time spanned by the next `num_in_flight_auctions` auctions (for `expires`).
        let horizon_ms = (self.event_time_ms(c.num_in_flight_auctions * TOTAL_PROPORTION / AUCTION_PROPORTION)
            - c.base_time_ms)
            .max(1) as u64;
        for n in first..first + count {
            if only.is_some_and(|k| k != kind_of(n)) {
                continue;
            }
            let mut r = Rng::for_event(c.seed, n);
            let t = self.event_time_ms(n);
            match kind_of(n) {
                EventKind::Person => {
                    let id = FIRST_PERSON_ID + people_before(n) as i64;
                    let name = format!("{} {}", FIRST_NAMES[r.below(11) as usize], LAST_NAMES[r.below(9) as usize]);
                    let email = format!("{}@{}.com", r.letters(3, 6), r.letters(3, 4));
                    let card = (0..4).map(|_| format!("{:04}", r.below(10_000))).collect::<Vec<_>>().join(" ");
                    let city = US_CITIES[r.below(10) as usize];
                    let state = US_STATES[r.below(6) as usize];
                    let size = 8 + name.len() + email.len() + card.len() + city.len() + state.len() + 8;
                    let ex = extra(&mut r, size, c.avg_person_bytes);
                    p.push(id, &name, &email, &card, city, state, t, ex);
                }
                EventKind::Auction => {
                    let id = FIRST_AUCTION_ID + auctions_before(n) as i64;
                    let item = r.letters(1, 20);
                    let desc = r.letters(1, 100);
                    let initial = price(&mut r);
                    let reserve = initial + price(&mut r);
                    let expires = t + 1 + r.below(2 * horizon_ms) as i64;
                    let seller = if r.below(c.hot_seller_ratio) > 0 {
                        // the first person of the current block of 100
                        FIRST_PERSON_ID + ((people_before(n).max(1) - 1) / HOT_SELLER_RATIO * HOT_SELLER_RATIO) as i64
                    } else {
                        self.active_person(&mut r, n)
                    };
                    let category = FIRST_CATEGORY_ID + r.below(NUM_CATEGORIES) as i64;
                    let size = 8 + item.len() + desc.len() + 8 * 6;
                    let ex = extra(&mut r, size, c.avg_auction_bytes);
                    a.push(id, &item, &desc, initial, reserve, t, expires, seller, category, ex);
                }
                EventKind::Bid => {
                    let auctions = auctions_before(n).max(1);
                    let auction = if r.below(c.hot_auction_ratio) > 0 {
                        FIRST_AUCTION_ID + ((auctions - 1) / HOT_AUCTION_RATIO * HOT_AUCTION_RATIO) as i64
                    } else {
                        let back = r.below(c.num_in_flight_auctions.min(auctions));
                        FIRST_AUCTION_ID + (auctions - 1 - back + r.below(10)) as i64
                    };
                    let bidder = if r.below(c.hot_bidder_ratio) > 0 {
                        // the second person of the current block of 100, with the Java
                        // generator's extra FIRST_PERSON_ID (bidder ids are offset by 2000)
                        FIRST_PERSON_ID
                            + FIRST_PERSON_ID
                            + ((people_before(n).max(1) - 1) / HOT_BIDDER_RATIO * HOT_BIDDER_RATIO + 1) as i64
                    } else {
                        FIRST_PERSON_ID + self.active_person(&mut r, n)
                    };
                    let price = price(&mut r);
                    let (channel, url) = if r.below(2) == 0 {
                        let (ch, url) = HOT_CHANNELS[r.below(4) as usize];
                        (ch.to_string(), url.to_string())
                    } else {
                        let i = r.below(10_000);
                        let mut url = format!(
                            "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
                            r.letters(5, 5),
                            r.letters(5, 5),
                            r.letters(5, 5)
                        );
                        if r.below(10) > 0 {
                            let rev: String = i.to_string().chars().rev().collect();
                            url.push_str(&format!("&channel_id={rev}"));
                        }
                        (format!("channel-{i}"), url)
                    };
                    let size = 8 * 4 + channel.len() + url.len();
                    let ex = extra(&mut r, size, c.avg_bid_bytes);
                    b.push(auction, bidder, price, &channel, &url, t, ex);
                }
            }
        }
        Ok(NexmarkBatches { person: p.finish()?, auction: a.finish()?, bid: b.finish()? })
    }
}

#[derive(Default)]
struct PersonCols {
    id: Vec<i64>,
    name: StringBuilder,
    email: StringBuilder,
    card: StringBuilder,
    city: StringBuilder,
    state: StringBuilder,
    t: Vec<i64>,
    extra: StringBuilder,
}

impl PersonCols {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, id: i64, name: &str, email: &str, card: &str, city: &str, state: &str, t: i64, extra: &str) {
        self.id.push(id);
        self.name.append_value(name);
        self.email.append_value(email);
        self.card.append_value(card);
        self.city.append_value(city);
        self.state.append_value(state);
        self.t.push(t);
        self.extra.append_value(extra);
    }
    fn finish(mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.id)),
            Arc::new(self.name.finish()),
            Arc::new(self.email.finish()),
            Arc::new(self.card.finish()),
            Arc::new(self.city.finish()),
            Arc::new(self.state.finish()),
            Arc::new(TimestampMillisecondArray::from(self.t)),
            Arc::new(self.extra.finish()),
        ];
        Ok(RecordBatch::try_new(person_schema(), cols)?)
    }
}

#[derive(Default)]
struct AuctionCols {
    id: Vec<i64>,
    item: StringBuilder,
    desc: StringBuilder,
    initial: Vec<i64>,
    reserve: Vec<i64>,
    t: Vec<i64>,
    expires: Vec<i64>,
    seller: Vec<i64>,
    category: Vec<i64>,
    extra: StringBuilder,
}

impl AuctionCols {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: i64,
        item: &str,
        desc: &str,
        initial: i64,
        reserve: i64,
        t: i64,
        expires: i64,
        seller: i64,
        category: i64,
        extra: &str,
    ) {
        self.id.push(id);
        self.item.append_value(item);
        self.desc.append_value(desc);
        self.initial.push(initial);
        self.reserve.push(reserve);
        self.t.push(t);
        self.expires.push(expires);
        self.seller.push(seller);
        self.category.push(category);
        self.extra.append_value(extra);
    }
    fn finish(mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.id)),
            Arc::new(self.item.finish()),
            Arc::new(self.desc.finish()),
            Arc::new(Int64Array::from(self.initial)),
            Arc::new(Int64Array::from(self.reserve)),
            Arc::new(TimestampMillisecondArray::from(self.t)),
            Arc::new(TimestampMillisecondArray::from(self.expires)),
            Arc::new(Int64Array::from(self.seller)),
            Arc::new(Int64Array::from(self.category)),
            Arc::new(self.extra.finish()),
        ];
        Ok(RecordBatch::try_new(auction_schema(), cols)?)
    }
}

#[derive(Default)]
struct BidCols {
    auction: Vec<i64>,
    bidder: Vec<i64>,
    price: Vec<i64>,
    channel: StringBuilder,
    url: StringBuilder,
    t: Vec<i64>,
    extra: StringBuilder,
}

impl BidCols {
    #[allow(clippy::too_many_arguments)]
    fn push(&mut self, auction: i64, bidder: i64, price: i64, channel: &str, url: &str, t: i64, extra: &str) {
        self.auction.push(auction);
        self.bidder.push(bidder);
        self.price.push(price);
        self.channel.append_value(channel);
        self.url.append_value(url);
        self.t.push(t);
        self.extra.append_value(extra);
    }
    fn finish(mut self) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from(self.auction)),
            Arc::new(Int64Array::from(self.bidder)),
            Arc::new(Int64Array::from(self.price)),
            Arc::new(self.channel.finish()),
            Arc::new(self.url.finish()),
            Arc::new(TimestampMillisecondArray::from(self.t)),
            Arc::new(self.extra.finish()),
        ];
        Ok(RecordBatch::try_new(bid_schema(), cols)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{Int64Type, TimestampMillisecondType};

    fn ints(b: &RecordBatch, col: &str) -> Vec<i64> {
        b.column_by_name(col).unwrap().as_primitive::<Int64Type>().values().to_vec()
    }

    #[test]
    fn the_mix_ids_and_event_times_follow_the_spec() {
        let g = NexmarkGenerator::new(NexmarkConfig { first_event_rate: 10_000, ..Default::default() });
        let out = g.generate(0, 5000).unwrap();
        assert_eq!((out.person.num_rows(), out.auction.num_rows(), out.bid.num_rows()), (100, 300, 4600));
        assert_eq!(ints(&out.person, "id"), (1000..1100).collect::<Vec<_>>());
        assert_eq!(ints(&out.auction, "id"), (1000..1300).collect::<Vec<_>>());
        // 10,000 events/s: 100 µs per event, so event n is at base + n / 10 ms
        assert_eq!(g.event_time_ms(0), 1_700_000_000_000);
        assert_eq!(g.event_time_ms(4999), 1_700_000_000_000 + 499);
        let times =
            out.bid.column_by_name("date_time").unwrap().as_primitive::<TimestampMillisecondType>().values().to_vec();
        assert!(times.windows(2).all(|w| w[0] <= w[1]), "monotone event time");
        let cats = ints(&out.auction, "category");
        assert!(cats.iter().all(|c| (10..15).contains(c)));
        assert_eq!(cats.iter().collect::<std::collections::HashSet<_>>().len(), 5);
    }

    #[test]
    fn hot_keys_come_in_the_stated_proportions() {
        let g = NexmarkGenerator::new(NexmarkConfig::default());
        let out = g.generate(0, 200_000).unwrap();
        let bids = out.bid.num_rows() as f64;
        let auctions = ints(&out.bid, "auction");
        let hot_auction = auctions.iter().filter(|a| (**a - FIRST_AUCTION_ID) % 100 == 0).count() as f64;
        // 50 % hot, plus random picks that happen to land on a block start (≈ 1 %)
        assert!((0.49..0.53).contains(&(hot_auction / bids)), "{}", hot_auction / bids);
        let bidders = ints(&out.bid, "bidder");
        let hot_bidder = bidders.iter().filter(|b| (**b - 2 * FIRST_PERSON_ID) % 100 == 1).count() as f64;
        assert!((0.74..0.78).contains(&(hot_bidder / bids)), "{}", hot_bidder / bids);
        let sellers = ints(&out.auction, "seller");
        let hot_seller =
            sellers.iter().filter(|s| (**s - FIRST_PERSON_ID) % 100 == 0).count() as f64 / sellers.len() as f64;
        assert!((0.74..0.78).contains(&hot_seller), "{hot_seller}");
        // every bid refers to an auction id at most 10 ahead of the newest one
        let max_auction = ints(&out.auction, "id").into_iter().max().unwrap();
        assert!(auctions.iter().all(|a| *a >= FIRST_AUCTION_ID && *a <= max_auction + 10));
        let prices = ints(&out.bid, "price");
        assert!(prices.iter().all(|p| (100..=100_000_000).contains(p)));
        let q2 = auctions.iter().filter(|a| **a % 123 == 0).count();
        assert!(q2 > 0, "q2's filter selects some bids");
    }

    #[test]
    fn generation_is_deterministic_and_independent_of_ranges() {
        let g = NexmarkGenerator::new(NexmarkConfig { seed: 7, ..Default::default() });
        let whole = g.generate(0, 1000).unwrap();
        let a = g.generate(0, 400).unwrap();
        let b = g.generate(400, 600).unwrap();
        let glue =
            |x: &RecordBatch, y: &RecordBatch| datafusion::arrow::compute::concat_batches(&x.schema(), [x, y]).unwrap();
        assert_eq!(glue(&a.bid, &b.bid), whole.bid);
        assert_eq!(glue(&a.person, &b.person), whole.person);
        assert_eq!(glue(&a.auction, &b.auction), whole.auction);
        let other = NexmarkGenerator::new(NexmarkConfig { seed: 8, ..Default::default() }).generate(0, 1000).unwrap();
        assert_ne!(other.bid.column_by_name("price"), whole.bid.column_by_name("price"));
        assert_eq!(other.bid.column_by_name("date_time"), whole.bid.column_by_name("date_time"));
    }

    #[test]
    fn generating_one_kind_gives_the_same_events() {
        let g = NexmarkGenerator::new(NexmarkConfig { seed: 5, ..Default::default() });
        let all = g.generate(100, 2000).unwrap();
        let bids = g.generate_only(100, 2000, Some(EventKind::Bid)).unwrap();
        assert_eq!(bids.bid, all.bid);
        assert_eq!((bids.person.num_rows(), bids.auction.num_rows()), (0, 0));
    }

    #[test]
    fn extra_pads_events_to_their_average_sizes() {
        let g = NexmarkGenerator::new(NexmarkConfig::default());
        let out = g.generate(0, 50_000).unwrap();
        let avg = |b: &RecordBatch| {
            let sizes: usize = (0..b.num_columns())
                .map(|i| {
                    let c = b.column(i);
                    match c.data_type() {
                        DataType::Utf8 => c.as_string::<i32>().value_data().len(),
                        _ => 8 * c.len(),
                    }
                })
                .sum();
            sizes as f64 / b.num_rows() as f64
        };
        for (b, target) in [(&out.person, 200.0), (&out.auction, 500.0), (&out.bid, 100.0)] {
            let a = avg(b);
            assert!((a - target).abs() / target < 0.15, "average {a} for target {target}");
        }
    }
}

/// The queries of NEXMARK.md §3 in LaminarDB SQL, exactly as written there, and the sources
/// they read.
pub mod queries {
    /// `CREATE SOURCE` for person, auction and bid with the generator's columns and a 4-second
    /// watermark delay (as the published runs).
    pub const SOURCES: [(&str, &str); 3] = [
        (
            "person",
            "CREATE SOURCE person (id BIGINT, name VARCHAR, email_address VARCHAR, credit_card VARCHAR, city VARCHAR, \
             state VARCHAR, date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
        ),
        (
            "auction",
            "CREATE SOURCE auction (id BIGINT, item_name VARCHAR, description VARCHAR, initial_bid BIGINT, reserve BIGINT, \
             date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra VARCHAR, \
             WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
        ),
        (
            "bid",
            "CREATE SOURCE bid (auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, \
             date_time TIMESTAMP, extra VARCHAR, WATERMARK FOR date_time AS date_time - INTERVAL '4' SECOND)",
        ),
    ];

    pub const Q0: &str = "SELECT auction, bidder, price, date_time, extra FROM bid";
    pub const Q1: &str = "SELECT auction, bidder, 0.908 * price AS price, date_time, extra FROM bid";
    pub const Q2: &str = "SELECT auction, price FROM bid WHERE auction % 123 = 0";
    pub const Q3: &str = "SELECT p.name, p.city, p.state, a.id \
        FROM auction a JOIN person p ON a.seller = p.id \
        WHERE a.category = 10 AND p.state IN ('OR', 'ID', 'CA')";
    pub const Q4: &str = "SELECT q.category, AVG(q.final) AS avg_final \
        FROM ( \
          SELECT MAX(b.price) AS final, a.category \
          FROM auction a JOIN bid b \
            ON a.id = b.auction AND b.date_time BETWEEN a.date_time AND a.expires \
          GROUP BY a.id, a.category \
        ) q \
        GROUP BY q.category";
    pub const Q5: &str = "SELECT ab.auction, ab.num \
        FROM ( \
          SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime \
          FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) \
          GROUP BY auction, window_start, window_end \
        ) ab \
        JOIN ( \
          SELECT MAX(c.num) AS maxn, c.starttime, c.endtime \
          FROM ( \
            SELECT COUNT(*) AS num, window_start AS starttime, window_end AS endtime \
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) \
            GROUP BY auction, window_start, window_end \
          ) c \
          GROUP BY c.starttime, c.endtime \
        ) mb \
        ON ab.starttime = mb.starttime AND ab.endtime = mb.endtime AND ab.num >= mb.maxn";
    /// q5 as RisingWave's "q5-rewrite": the hottest auctions per window by RANK() instead of a
    /// self-join.
    pub const Q5_REWRITE: &str = "SELECT auction, num FROM ( \
          SELECT auction, num, RANK() OVER (PARTITION BY starttime ORDER BY num DESC) AS rk \
          FROM ( \
            SELECT auction, COUNT(*) AS num, window_start AS starttime, window_end AS endtime \
            FROM TABLE(HOP(TABLE bid, DESCRIPTOR(date_time), INTERVAL '2' SECOND, INTERVAL '10' SECOND)) \
            GROUP BY auction, window_start, window_end \
          ) c \
        ) r WHERE rk = 1";
    /// q7 as RisingWave's "q7-rewrite": the highest bids per 10-second window by a window-function
    /// top-1 instead of a join.
    pub const Q7_REWRITE: &str = "SELECT auction, price, bidder, date_time, extra FROM ( \
          SELECT auction, price, bidder, date_time, extra, RANK() OVER (PARTITION BY window_start ORDER BY price DESC) AS rk \
          FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
        ) r WHERE rk = 1";
    pub const Q7: &str = "SELECT b.auction, b.price, b.bidder, b.date_time, b.extra \
        FROM bid b \
        JOIN ( \
          SELECT MAX(price) AS maxprice, window_end AS date_time \
          FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
          GROUP BY window_start, window_end \
        ) b1 \
        ON b.price = b1.maxprice \
        WHERE b.date_time BETWEEN b1.date_time - INTERVAL '10' SECOND AND b1.date_time";
    pub const Q8: &str = "SELECT p.id, p.name, p.starttime \
        FROM ( \
          SELECT id, name, window_start AS starttime, window_end AS endtime \
          FROM TABLE(TUMBLE(TABLE person, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
          GROUP BY id, name, window_start, window_end \
        ) p \
        JOIN ( \
          SELECT seller, window_start AS starttime, window_end AS endtime \
          FROM TABLE(TUMBLE(TABLE auction, DESCRIPTOR(date_time), INTERVAL '10' SECOND)) \
          GROUP BY seller, window_start, window_end \
        ) a \
        ON p.id = a.seller AND p.starttime = a.starttime AND p.endtime = a.endtime";
}

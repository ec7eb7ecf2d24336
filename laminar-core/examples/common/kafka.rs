//! What the Kafka benchmarks share (`kafka_bench`, `benches/soak`): the test broker's address and
//! topic creation.

use std::error::Error;

type BoxResult<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// The broker of `scripts/services.sh start kafka`: `$LAMINAR_KAFKA` or `<target dir>/services.env`.
pub fn broker() -> BoxResult<String> {
    if let Ok(b) = std::env::var("LAMINAR_KAFKA") {
        return Ok(b);
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let target = std::env::var("CARGO_TARGET_DIR").map(std::path::PathBuf::from).unwrap_or(root.join("target"));
    let env = std::fs::read_to_string(target.join("services.env")).unwrap_or_default();
    env.lines()
        .find_map(|l| l.strip_prefix("LAMINAR_KAFKA="))
        .map(str::to_string)
        .ok_or_else(|| "no Kafka broker: run scripts/services.sh start kafka".into())
}

/// Creates `name` with `partitions` partitions, replication 1.
pub fn create_topic(b: &str, name: &str, partitions: i32) -> BoxResult<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new().set("bootstrap.servers", b).create()?;
    let t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in futures::executor::block_on(admin.create_topics(&[t], &AdminOptions::new()))? {
        r.map_err(|(t, e)| format!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// A timestamp in epoch milliseconds as the engine prints a TIMESTAMP (`2023-11-14T22:13:20`).
pub fn ts_text(ms: u64) -> String {
    let a = laminar_core::arrow::array::TimestampMicrosecondArray::from_iter_values([(ms * 1000) as i64]);
    laminar_core::arrow::util::display::array_value_to_string(&a, 0).unwrap()
}

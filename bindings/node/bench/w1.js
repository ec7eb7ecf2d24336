'use strict';
// W1 (DESIGN §8: key (i*2654435761) mod 1000, value (i*7919) mod 1000, time base + i ms,
// 1-minute TUMBLE COUNT/SUM, batches of 8,192) pushed through the Node package until the last
// window is received, beside the same rows through the Rust API (the addon's benchW1Rust) in
// the same run.   node bench/w1.js [events]   (default 10,000,000)
const arrow = require('apache-arrow');
const laminardb = require('..');
const native = require('../laminardb.node');

async function main() {
  const events = Number(process.argv[2] || 10_000_000);
  const batches = [];
  for (let start = 0; start < events; start += 8192) {
    const n = Math.min(8192, events - start);
    const k = new BigInt64Array(n), v = new BigInt64Array(n), ts = new BigInt64Array(n);
    for (let j = 0; j < n; j++) {
      const i = BigInt(start + j);
      k[j] = (i * 2654435761n) % 1000n;
      v[j] = (i * 7919n) % 1000n;
      ts[j] = 1_700_000_000_000_000n + i * 1000n;
    }
    const table = new arrow.Table({
      k: arrow.makeVector(k),
      v: arrow.makeVector(v),
      ts: arrow.makeVector({ type: new arrow.TimestampMicrosecond(), data: ts }),
    });
    batches.push(arrow.tableToIPC(table, 'stream'));
  }
  const db = await laminardb.open();
  await db.execute("CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)");
  await db.execute("CREATE STREAM w1 AS SELECT k, COUNT(*) AS n, SUM(v) AS s, window_start FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)");
  const sub = db.subscribe('w1', { bufferSize: 65536 });
  const w = db.writer('events');
  const t0 = process.hrtime.bigint();
  for (const b of batches) await w.insert(b);
  await w.finish();
  let counted = 0;
  for await (const t of sub) {
    for (const n of t.getChild('n')) counted += Number(n);
    if (counted >= events) break;
  }
  const nodeSecs = Number(process.hrtime.bigint() - t0) / 1e9;
  w.close();
  await db.close();
  const rustSecs = native.benchW1Rust(events);
  const rate = (s) => Math.round(events / s).toLocaleString('en-US');
  console.log(`W1 ${events.toLocaleString('en-US')} events, batches of 8,192 (laminardb ${laminardb.version})`);
  console.log(`  Node package, end to end: ${rate(nodeSecs)} rows/s (${nodeSecs.toFixed(3)} s)`);
  console.log(`  Rust API, same rows:      ${rate(rustSecs)} rows/s (${rustSecs.toFixed(3)} s)`);
  console.log(`  ratio Node / Rust: ${(rustSecs / nodeSecs).toFixed(3)}`);
  if (counted !== events) {
    console.log(`MISMATCH: ${counted} rows counted of ${events}`);
    process.exit(1);
  }
}
main().catch((e) => { console.error(e); process.exit(1); });

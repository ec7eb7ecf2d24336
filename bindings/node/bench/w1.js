'use strict';
// W1 (DESIGN §8: key (i*2654435761) mod 1000, value (i*7919) mod 1000, time base + i ms,
// 1-minute TUMBLE COUNT/SUM, batches of 8,192) pushed through the Node package until the last
// window is received, beside the same rows through the Rust API (the addon's benchW1Rust) in
// the same run; then W1 with a JavaScript scalar function beside the same expression built in.
//   node bench/w1.js [events]   (default 10,000,000)
const arrow = require('apache-arrow');
const laminardb = require('..');
const native = require('../laminardb.node');

async function main() {
  const events = Number(process.argv[2] || 10_000_000);
  const batches = [];
  let sumV = 0n, sumAffine = 0n;
  for (let start = 0; start < events; start += 8192) {
    const n = Math.min(8192, events - start);
    const k = new BigInt64Array(n), v = new BigInt64Array(n), ts = new BigInt64Array(n);
    for (let j = 0; j < n; j++) {
      const i = BigInt(start + j);
      k[j] = (i * 2654435761n) % 1000n;
      v[j] = (i * 7919n) % 1000n;
      sumV += v[j];
      sumAffine += v[j] * 2n + 1n;
      ts[j] = 1_700_000_000_000_000n + i * 1000n;
    }
    const table = new arrow.Table({
      k: arrow.makeVector(k),
      v: arrow.makeVector(v),
      ts: arrow.makeVector({ type: new arrow.TimestampMicrosecond(), data: ts }),
    });
    batches.push(arrow.tableToIPC(table, 'stream'));
  }
  const nodeSecs = await run(batches, events, 'SUM(v) AS s', sumV);
  const rustSecs = native.benchW1Rust(events);
  const rate = (s) => Math.round(events / s).toLocaleString('en-US');
  console.log(`W1 ${events.toLocaleString('en-US')} events, batches of 8,192 (laminardb ${laminardb.version})`);
  console.log(`  Node package, end to end: ${rate(nodeSecs)} rows/s (${nodeSecs.toFixed(3)} s)`);
  console.log(`  Rust API, same rows:      ${rate(rustSecs)} rows/s (${rustSecs.toFixed(3)} s)`);
  console.log(`  ratio Node / Rust: ${(rustSecs / nodeSecs).toFixed(3)}`);
  // (b) A JavaScript scalar function in the projection beside the same expression built in,
  // alternated, best of 2 each: SUM(x2p1(v)) against SUM(v * 2 + 1).
  let builtIn = Infinity, udf = Infinity;
  for (let r = 0; r < 2; r++) {
    builtIn = Math.min(builtIn, await run(batches, events, 'SUM(v * 2 + 1) AS s', sumAffine));
    udf = Math.min(udf, await run(batches, events, 'SUM(x2p1(v)) AS s', sumAffine, true));
  }
  console.log(`  SUM(v * 2 + 1), built in:            ${rate(builtIn)} rows/s (${builtIn.toFixed(3)} s)`);
  console.log(`  SUM(x2p1(v)), JavaScript function:   ${rate(udf)} rows/s (${udf.toFixed(3)} s)`);
  console.log(`  ratio function / built in: ${(builtIn / udf).toFixed(3)}`);
}

// x * 2 + 1 over a whole Int64 vector (BigInt64Array in, BigInt64Array out; the bench has no nulls).
function x2p1(x) {
  const d = x.toArray();
  const out = new BigInt64Array(d.length);
  for (let i = 0; i < d.length; i++) out[i] = d[i] * 2n + 1n;
  return out;
}

// Pushes the batches through W1 with `agg` as the SUM column until every event is counted in a
// closed window, and checks the sums against `want`; returns the seconds.
async function run(batches, events, agg, want, withUdf = false) {
  const db = await laminardb.open();
  if (withUdf) db.registerFunction('x2p1', x2p1, [new arrow.Int64()], new arrow.Int64());
  await db.execute("CREATE SOURCE events (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND)");
  await db.execute(`CREATE STREAM w1 AS SELECT k, COUNT(*) AS n, ${agg}, window_start FROM events GROUP BY k, TUMBLE(ts, INTERVAL '1' MINUTE)`);
  const sub = db.subscribe('w1', { bufferSize: 65536 });
  const w = db.writer('events');
  const t0 = process.hrtime.bigint();
  for (const b of batches) await w.insert(b);
  await w.finish();
  let counted = 0, sum = 0n;
  for await (const t of sub) {
    for (const n of t.getChild('n')) counted += Number(n);
    for (const s of t.getChild('s')) sum += BigInt(s);
    if (counted >= events) break;
  }
  const secs = Number(process.hrtime.bigint() - t0) / 1e9;
  w.close();
  await db.close();
  if (counted !== events || sum !== want) {
    console.log(`MISMATCH (${agg}): ${counted} rows counted of ${events}, sum ${sum} of ${want}`);
    process.exit(1);
  }
  return secs;
}
main().catch((e) => { console.error(e); process.exit(1); });

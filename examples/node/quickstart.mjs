// LaminarDB from Node: a source, a windowed continuous query, rows pushed as plain objects,
// windows read by async iteration, and an ad-hoc query.   node examples/node/quickstart.mjs
import { open } from '../../bindings/node/index.mjs';

const db = await open();
await db.execute(`CREATE SOURCE trades (sym VARCHAR, qty BIGINT, ts TIMESTAMP,
                  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)`);
await db.execute(`CREATE STREAM volume AS SELECT sym, SUM(qty) AS total, window_start
                  FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)`);
const windows = db.subscribe('volume');

const t = (s) => new Date(Date.UTC(2024, 0, 1, 0, 0, s));
await db.insert('trades', [
  { sym: 'A', qty: 5, ts: t(1) },
  { sym: 'B', qty: 2, ts: t(3) },
  { sym: 'A', qty: 7, ts: t(12) },
]);
const w = db.writer('trades');
await w.finish(); // end of input: every window closes
w.close();

let seen = 0;
for await (const batch of windows) {
  for (const row of batch) {
    console.log(`${row.sym} ${new Date(Number(row.window_start)).toISOString()} total=${row.total}`);
    seen++;
  }
  if (seen === 3) break;
}
console.log((await db.query('SELECT COUNT(*) AS n FROM trades')).toArray()[0].n.toString(), 'rows in trades');
await db.close();

'use strict';
const { test } = require('node:test');
const assert = require('node:assert/strict');
const arrow = require('apache-arrow');
const laminardb = require('..');

const base = Date.UTC(2024, 0, 1);
const at = (s) => new Date(base + s * 1000);

async function setup() {
  const db = await laminardb.open(':memory:', { workers: 2 });
  await db.execute("CREATE SOURCE trades (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)");
  await db.execute('CREATE STREAM vol AS SELECT sym, SUM(qty) AS total, COUNT(*) AS n, window_start FROM trades GROUP BY sym, TUMBLE(ts, INTERVAL \'10\' SECOND)');
  return db;
}

test('execute, query, insert forms, schema, catalog, metrics, checkpoint, close', async () => {
  const db = await setup();
  assert.equal(typeof laminardb.version, 'string');
  assert.equal(await db.insert('trades', [{ sym: 'A', qty: 5, ts: at(1) }, { sym: 'B', qty: 7, ts: at(2) }]), 2);
  const t = new arrow.Table({
    sym: arrow.vectorFromArray(['C'], new arrow.Utf8()),
    qty: arrow.vectorFromArray([3n], new arrow.Int64()),
    ts: arrow.vectorFromArray([at(3)], new arrow.TimestampMicrosecond()),
  });
  assert.equal(await db.insert('trades', t), 1);
  assert.equal(await db.insert('trades', t.batches[0]), 1);
  assert.equal(await db.insert('trades', arrow.tableToIPC(t, 'stream')), 1);
  const q = await db.query('SELECT sym, SUM(qty) AS q FROM trades GROUP BY sym ORDER BY sym');
  assert.ok(q instanceof arrow.Table);
  assert.deepEqual(q.toArray().map((r) => [r.sym, Number(r.q)]), [['A', 5], ['B', 7], ['C', 9]]);
  const shown = await db.execute('SHOW SOURCES');
  assert.deepEqual(shown.toArray().map((r) => r.name), ['trades']);
  assert.equal(await db.execute("CREATE SOURCE other (a BIGINT)"), null);
  const schema = await db.schema('trades');
  assert.deepEqual(schema.fields.map((f) => f.name), ['sym', 'qty', 'ts']);
  assert.equal(await db.execute('CREATE TABLE prices (sym VARCHAR PRIMARY KEY, px DOUBLE)'), null);
  // a table is pushed into like a source, and is not a stream
  assert.deepEqual((await db.sources()).sort(), ['other', 'prices', 'trades']);
  assert.deepEqual(await db.streams(), ['vol']);
  assert.equal((await db.catalog()).find((e) => e.name === 'prices').kind, 'table');
  const cat = await db.catalog();
  assert.deepEqual(cat.find((e) => e.name === 'vol').inputs, ['trades']);
  const m = await db.metrics();
  assert.deepEqual(m.schema.fields.map((f) => f.name), ['kind', 'name', 'metric', 'value']);
  // Prometheus text: two rows inserted as objects, then the same one-row table three ways.
  const text = await db.metricsText();
  assert.match(text, /^laminardb_source_records_total\{source="trades"\} 5$/m);
  assert.match(text, /^# TYPE laminardb_checkpoint_size_bytes histogram$/m);
  await assert.rejects(db.checkpoint(), (e) => e instanceof laminardb.LaminarError && e.code === 'INVALID_STATE');
  await db.close();
  await db.close();
  assert.equal(db.isClosed, true);
  await assert.rejects(db.query('SELECT 1'), (e) => e.code === 'CLOSED');
});

test('error codes', async () => {
  const db = await setup();
  const cases = [
    [() => db.query('SELEC 1'), 'SQL_SYNTAX'],
    [() => db.execute('CREATE STREAM x AS SELECT nope FROM trades'), 'PLAN'],
    [() => db.schema('trade'), 'NOT_FOUND'],
    [() => db.execute('CREATE SOURCE trades (a BIGINT)'), 'ALREADY_EXISTS'],
    [() => db.insert('trades', [{ sym: 'A', qty: 'many', ts: at(0) }]), 'INVALID_DATA'],
    [() => db.insert('trades', [{ nope: 1 }]), 'INVALID_DATA'],
    [() => db.query('CREATE SOURCE y (a BIGINT)'), 'INVALID_ARGUMENT'],
  ];
  for (const [f, code] of cases) {
    await assert.rejects(f(), (e) => {
      assert.ok(e instanceof laminardb.LaminarError, String(e));
      assert.equal(e.code, code, e.message);
      return true;
    });
  }
  await assert.rejects(laminardb.open('/dev/null/cannot-be-a-directory'), (e) => e.code === 'IO');
  await assert.rejects(laminardb.open(':memory:', { wrokers: 1 }), (e) => e.code === 'INVALID_ARGUMENT' && /did you mean 'workers'/.test(e.message));
  await db.close();
});

test('a windowed aggregate matches an oracle computed here', async () => {
  const db = await setup();
  const sub = db.subscribe('vol');
  const rows = [];
  let seed = 7;
  const rand = (n) => ((seed = (seed * 1103515245 + 12345) % 2147483648) % n);
  for (let i = 0; i < 3000; i++) rows.push({ sym: 'S' + rand(5), qty: rand(100), ts: at(i * 0.05 + rand(500) / 1000) });
  const oracle = new Map();
  for (const r of rows) {
    const key = `${r.sym}|${Math.floor((r.ts.getTime() - base) / 10000)}`;
    const o = oracle.get(key) || { total: 0, n: 0 };
    o.total += r.qty;
    o.n += 1;
    oracle.set(key, o);
  }
  const w = db.writer('trades');
  for (let i = 0; i < rows.length; i += 250) await w.insert(rows.slice(i, i + 250));
  await w.finish();
  w.close();
  const got = new Map();
  for await (const t of sub) {
    for (const r of t.toArray()) got.set(`${r.sym}|${Math.floor((Number(r.window_start) - base) / 10000)}`, { total: Number(r.total), n: Number(r.n) });
    if (got.size === oracle.size) break; // an early break ends the subscription
  }
  assert.deepEqual(new Map([...got].sort()), new Map([...oracle].sort()));
  assert.equal(await sub.next(), null);
  await db.close();
});

test('AbortSignal and the callback form', async () => {
  const db = await setup();
  await db.execute('CREATE STREAM rows_out AS SELECT sym, qty FROM trades');
  const ac = new AbortController();
  const sub = db.subscribe('rows_out', { signal: ac.signal });
  setTimeout(() => ac.abort(), 50);
  const seen = [];
  for await (const t of sub) seen.push(t);
  assert.equal(seen.length, 0); // ended by the abort, with nothing pushed

  const got = [];
  const errors = [];
  const ac2 = new AbortController();
  const cb = db.subscribe('rows_out', (t) => { got.push(...t.toArray().map((r) => r.sym)); }, { signal: ac2.signal, onError: (e) => errors.push(e) });
  assert.ok(cb instanceof laminardb.CallbackSubscription);
  await db.insert('trades', [{ sym: 'X', qty: 1, ts: at(0) }]);
  for (let i = 0; i < 100 && got.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(got, ['X']);
  ac2.abort();
  assert.deepEqual(errors, []);
  await db.close();
});

test('a thousand subscribe/close cycles, then the process can exit', async () => {
  const db = await setup();
  for (let i = 0; i < 1000; i++) {
    const s = db.subscribe('vol');
    s.close();
    assert.equal(await s.next(), null);
  }
  for (let i = 0; i < 1000; i++) {
    const s = db.subscribe('vol', () => {});
    s.close();
    assert.equal(s.closed, true);
  }
  await db.close();
});

test('writer watermark closes windows; Symbol.asyncDispose closes the connection', async () => {
  const db = await setup();
  const sub = db.subscribe('vol');
  const w = db.writer('trades');
  await w.insert([{ sym: 'A', qty: 2, ts: at(1) }]);
  await w.watermark(at(60)); // by hand: far past the window [0, 10 s)
  await w.flush();
  const t = await sub.next();
  assert.deepEqual(t.toArray().map((r) => [r.sym, Number(r.total)]), [['A', 2]]);
  w.close();
  w.close();
  await assert.rejects(w.insert([{ sym: 'A', qty: 1, ts: at(2) }]), (e) => e.code === 'INVALID_STATE');
  if (Symbol.asyncDispose) {
    await db[Symbol.asyncDispose]();
    assert.equal(db.isClosed, true);
  } else {
    await db.close();
  }
  assert.equal(await sub.next(), null);
});

test('writer operations apply in call order without awaiting; a throwing onError is contained', async () => {
  const db = await setup();
  const sub = db.subscribe('vol');
  const w = db.writer('trades');
  const ops = [w.insert([{ sym: 'A', qty: 1, ts: at(1) }]), w.watermark(at(30)), w.insert([{ sym: 'A', qty: 1, ts: at(40) }]), w.flush()];
  await Promise.all(ops);
  const t = await sub.next();
  assert.deepEqual(t.toArray().map((r) => Number(r.total)), [1]); // the first row was in before the watermark
  await assert.rejects(w.watermark(NaN), TypeError);
  w.close();
  await db.execute('CREATE STREAM rows_out AS SELECT sym FROM trades');
  const warnings = [];
  const onWarning = (w) => warnings.push(w.message);
  process.on('warning', onWarning);
  let calls = 0;
  const cb = db.subscribe('rows_out', () => { calls++; throw new Error('from onBatch'); }, { onError: () => { throw new Error('from onError'); } });
  await db.insert('trades', [{ sym: 'B', qty: 1, ts: at(50) }]);
  await db.insert('trades', [{ sym: 'C', qty: 1, ts: at(51) }]);
  for (let i = 0; i < 200 && calls < 2; i++) await new Promise((r) => setTimeout(r, 10));
  assert.equal(calls, 2); // the subscription went on after the first throw
  await new Promise((r) => setImmediate(r));
  process.off('warning', onWarning);
  assert.ok(warnings.some((m) => /from onError/.test(m)));
  cb.close();
  await db.close();
});

test('a directory is durable; a subscriber resumes after its last epoch', async () => {
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'laminar-node-'));
  const ddl = [
    "CREATE SOURCE IF NOT EXISTS t (sym VARCHAR, qty BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts)",
    "CREATE STREAM IF NOT EXISTS s AS SELECT sym, SUM(qty) AS q, window_start FROM t GROUP BY sym, TUMBLE(ts, INTERVAL '10' SECOND)",
  ];
  let db = await laminardb.open(dir, { checkpoint_interval: '0' });
  for (const d of ddl) await db.execute(d);
  let sub = db.subscribe('s');
  const seen = [];
  const cb = db.subscribe('s', (table) => {
    for (const r of table.toArray()) seen.push([cb.epoch, r.sym]);
  });
  await db.insert('t', [{ sym: 'A', qty: 1, ts: at(0) }, { sym: 'B', qty: 2, ts: at(11) }]); // closes [0,10)
  let t = await sub.next();
  assert.deepEqual([sub.epoch, t.toArray().map((r) => r.sym)], [1, ['A']]);
  await db.checkpoint();
  await db.insert('t', [{ sym: 'A', qty: 5, ts: at(21) }]); // closes [10,20): epoch 2
  t = await sub.next();
  assert.deepEqual([sub.epoch, t.toArray().map((r) => r.sym)], [2, ['B']]);
  // A callback subscription reads the epoch of the batch it is handling.
  for (let i = 0; i < 500 && seen.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
  assert.deepEqual(seen, [[1, 'A'], [2, 'B']]);
  cb.close();
  await db.close(); // a last checkpoint: epoch 2's results are kept
  db = await laminardb.open(dir);
  for (const d of ddl) await db.execute(d); // the same definitions again are fine
  sub = db.subscribe('s', { resumeAfterEpoch: 1 });
  t = await sub.next();
  assert.deepEqual([sub.epoch, t.toArray().map((r) => [r.sym, Number(r.q)])], [2, [['B', 2]]]);
  sub.close();
  await db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('a failed stream says so: LaminarError with stream set, code kept', async () => {
  const db = await laminardb.open(':memory:', { workers: 2 });
  await db.execute('CREATE SOURCE s (k BIGINT, v BIGINT)');
  await db.execute('CREATE STREAM x AS SELECT k, 10 / v AS y FROM s');
  await db.execute('CREATE MATERIALIZED VIEW mv AS SELECT k, 10 / v AS y FROM s');
  const sub = db.subscribe('x');
  await db.insert('s', [{ k: 1, v: 0 }]);
  await assert.rejects(async () => { for (;;) if ((await sub.next()) === null) break; }, (e) => {
    assert.ok(e instanceof laminardb.LaminarError, String(e));
    assert.equal(e.stream, 'x');
    assert.equal(e.code, 'INVALID_DATA');
    return true;
  });
  assert.throws(() => db.subscribe('x'), (e) => e.stream === 'x');
  await assert.rejects(db.query('SELECT * FROM mv'), (e) => e.stream === 'mv' && /materialized view 'mv' has failed/.test(e.message));
  await assert.rejects(db.query('SELECT * FROM nope'), (e) => e instanceof laminardb.LaminarError && e.stream === null);
  await db.close();
});

'use strict';
// JavaScript scalar functions (issue 25): in a windowed continuous query and in ad-hoc SQL, equal
// to the same computation done in JavaScript; failures fail the calling statement or stream with
// the thrown error's text and the database goes on; the package's own waiting calls (writer,
// subscribe, close) while a stream calls a function do not deadlock; a durable database reopens
// with the functions given to open().
const { test } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const arrow = require('apache-arrow');
const laminardb = require('..');

const base = Date.UTC(2024, 0, 1);
const i64 = new arrow.Int64();

// affine(a, b) = a * 2 + b (BigInt), null in, null out.
function affine(a, b) {
  const out = new Array(a.length);
  for (let i = 0; i < a.length; i++) {
    const x = a.get(i), y = b.get(i);
    out[i] = x === null || y === null ? null : x * 2n + y;
  }
  return out;
}

test('a scalar function in a window and ad hoc equals JavaScript', async () => {
  const db = await laminardb.open(':memory:', { workers: 2 });
  db.registerFunction('affine', affine, [i64, i64], i64);
  await db.execute("CREATE SOURCE t (k BIGINT, v BIGINT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '1' SECOND)");
  await db.execute(
    'CREATE MATERIALIZED VIEW w AS SELECT k, window_start AS ws, SUM(affine(k, v)) AS s FROM t ' +
      "GROUP BY k, TUMBLE(ts, INTERVAL '1' SECOND)",
  );
  const rows = [];
  const want = new Map();
  for (let i = 0; i < 3000; i++) {
    const k = (i * 7919) % 7, v = ((i * 37) % 101) - 50, ms = i * 3;
    rows.push({ k, v, ts: new Date(base + ms) });
    const key = `${k}/${base + Math.floor(ms / 1000) * 1000}`;
    want.set(key, (want.get(key) || 0) + k * 2 + v);
  }
  await db.insert('t', rows);
  await db.insert('t', [{ k: 0, v: 0, ts: new Date(base + 3_600_000) }]); // closes every window of the data
  const got = new Map();
  for (const r of (await db.query('SELECT k, ws, s FROM w')).toArray()) {
    got.set(`${Number(r.k)}/${Number(r.ws)}`, Number(r.s));
  }
  assert.deepEqual(got, want);
  const adHoc = (await db.query('SELECT k, v, affine(k, v) AS y FROM t')).toArray();
  assert.equal(adHoc.length, rows.length + 1);
  for (const r of adHoc) assert.equal(r.y, r.k * 2n + r.v);
  // typed-array and Vector results
  db.registerFunction('halve', (x) => Float64Array.from(x, (v) => v / 2), [new arrow.Float64()], new arrow.Float64());
  db.registerFunction('shout', (s) => arrow.vectorFromArray(Array.from(s, (x) => x.toUpperCase()), new arrow.Utf8()), [new arrow.Utf8()], new arrow.Utf8());
  assert.deepEqual((await db.query("SELECT halve(3.0) AS h, shout('hi') AS s")).toArray().map((r) => [r.h, r.s]), [[1.5, 'HI']]);
  const fns = (await db.query('SHOW FUNCTIONS')).toArray().map((r) => [r.name, r.kind]);
  assert.deepEqual(fns, [['affine', 'scalar'], ['halve', 'scalar'], ['shout', 'scalar']]);
  await db.close();
});

test('failing functions fail their statement or stream; the database goes on', async () => {
  const db = await laminardb.open();
  const cases = [
    ['throws', () => { throw new TypeError('the model is not loaded'); }, 'TypeError: the model is not loaded'],
    ['short', (a) => new Array(a.length - 1).fill(1n), 'returned 0 values for 1 rows'],
    ['wrong_type', (a) => Array.from(a, () => 'x'), 'Int64'],
    ['not_a_vector', () => arrow.vectorFromArray(['x'], new arrow.Utf8()), 'returned Utf8 where Int64 was declared'],
  ];
  for (const [name, fn, says] of cases) {
    db.registerFunction(name, fn, [i64, i64], i64);
    await assert.rejects(db.query(`SELECT ${name}(1, 2) AS y`), (e) => {
      assert.equal(e.code, 'INVALID_DATA', `${name}: ${e.message}`);
      assert.ok(e.message.includes(says) && e.message.includes(name), `${name}: ${e.message}`);
      return true;
    });
  }
  db.registerFunction('affine', affine, [i64, i64], i64);
  await db.execute(
    'CREATE SOURCE s (k BIGINT, v BIGINT);' +
      'CREATE MATERIALIZED VIEW bad AS SELECT k, throws(k, v) AS y FROM s;' +
      'CREATE MATERIALIZED VIEW good AS SELECT k, affine(k, v) AS y FROM s',
  );
  await db.insert('s', [{ k: 1, v: 2 }, { k: 3, v: 4 }]);
  await assert.rejects(db.query('SELECT * FROM bad'), (e) => e.stream === 'bad' && e.message.includes('the model is not loaded'));
  assert.deepEqual((await db.query('SELECT k, y FROM good ORDER BY k')).toArray().map((r) => [r.k, r.y]), [[1n, 4n], [3n, 10n]]);
  assert.throws(() => db.registerFunction('abs', affine, [i64, i64], i64), (e) => e.code === 'ALREADY_EXISTS');
  assert.throws(() => db.registerFunction('Affine', affine, [i64, i64], i64), (e) => e.code === 'INVALID_ARGUMENT' && /lowercase/.test(e.message));
  assert.throws(() => db.registerFunction('x', affine, ['int64'], i64), TypeError);
  await db.close();
});

test('waiting calls of the package serve functions meanwhile (no deadlock)', async () => {
  const db = await laminardb.open(':memory:', { workers: 1 });
  let calls = 0;
  db.registerFunction('ident', (a) => { calls++; return a; }, [i64], i64);
  await db.execute('CREATE SOURCE s (k BIGINT); CREATE STREAM o AS SELECT ident(k) AS y FROM s');
  const busy = (ms) => { const t = Date.now() + ms; while (Date.now() < t); };
  const w = db.writer('s');
  // While this thread is busy, the pipeline processes the insert and waits (holding the engine's
  // lock) for this thread to run `ident`; each call below then needs that lock on this thread.
  let p = w.insert([{ k: 1 }]);
  busy(300);
  db.writer('s').close();
  await p;
  p = w.insert([{ k: 2 }]);
  busy(300);
  const sub = db.subscribe('o');
  await p;
  p = w.insert([{ k: 3 }]);
  busy(300);
  sub.close();
  w.close();
  await db.close(); // joins the pipeline
  await p.catch(() => {}); // the last insert may have been cut off by close
  assert.ok(calls >= 2, `${calls} calls`);
});

test('a durable database reopens with the functions given to open()', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'laminar-udf-'));
  const functions = [{ name: 'affine', fn: affine, argTypes: [i64, i64], returnType: i64 }];
  let db = await laminardb.open(dir, {}, { functions });
  await db.execute('CREATE SOURCE s (k BIGINT, v BIGINT); CREATE MATERIALIZED VIEW m AS SELECT k, affine(k, v) AS y FROM s');
  await db.insert('s', [{ k: 1, v: 2 }]);
  await db.close();
  await assert.rejects(laminardb.open(dir), (e) => e.code === 'PLAN' && e.message.includes('affine'));
  db = await laminardb.open(dir, {}, { functions });
  assert.deepEqual((await db.query('SELECT k, y FROM m')).toArray().map((r) => [r.k, r.y]), [[1n, 4n]]);
  await db.close();
  fs.rmSync(dir, { recursive: true, force: true });
});

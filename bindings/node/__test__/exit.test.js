'use strict';
// The process exits by itself once the connection is closed, even with subscriptions open.
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

test('the process exits by itself after close', () => {
  const script = `
    const laminardb = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    (async () => {
      const db = await laminardb.open();
      await db.execute("CREATE SOURCE s (a BIGINT); CREATE STREAM t AS SELECT a FROM s");
      const subs = [];
      for (let i = 0; i < 50; i++) subs.push(db.subscribe('t'));
      const it = subs[0][Symbol.asyncIterator]();
      const pending = it.next();
      await db.close();
      const r = await pending;
      console.log('ended', r.done);
    })();`;
  const t0 = Date.now();
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /ended true/);
  assert.ok(Date.now() - t0 < 15000);
});

test('an open callback subscription does not keep the process alive', () => {
  const script = `
    const laminardb = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    (async () => {
      const db = await laminardb.open();
      await db.execute("CREATE SOURCE s (a BIGINT); CREATE STREAM t AS SELECT a FROM s");
      db.subscribe('t', (batch) => console.log('batch', batch.numRows));
      await db.insert('s', [{ a: 1 }]);
      await new Promise((r) => setTimeout(r, 200)); // the batch arrives while a timer holds the loop
      console.log('leaving, subscription still open');
    })();`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 20000 });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /batch 1/);
  assert.match(r.stdout, /leaving, subscription still open/);
});

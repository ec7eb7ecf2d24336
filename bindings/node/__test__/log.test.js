'use strict';
// The library writes nothing to stderr: its warnings are process warnings (LaminarDBWarning).
const { test } = require('node:test');
const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const path = require('node:path');

test('a recovery warning is a process warning, and the library writes nothing to stderr', () => {
  // A child process started with --no-warnings (Node itself prints no warning) lists the
  // LaminarDBWarnings it gets; its stderr must stay empty.
  const script = `
    const fs = require('node:fs');
    const os = require('node:os');
    const path = require('node:path');
    const laminardb = require(${JSON.stringify(path.resolve(__dirname, '..'))});
    const warnings = [];
    process.on('warning', (w) => { if (w.name === 'LaminarDBWarning') warnings.push({ code: w.code, message: w.message }); });
    (async () => {
      const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'laminar-node-log-'));
      // A durable database, closed (a checkpoint), then a few bytes of garbage at the end of its
      // newest log segment: the next open drops them with a warning.
      let db = await laminardb.open(dir);
      await db.execute('CREATE SOURCE s (k BIGINT NOT NULL)');
      db.close();
      const wal = path.join(dir, 'wal');
      const newest = fs.readdirSync(wal).sort().pop();
      fs.appendFileSync(path.join(wal, newest), Buffer.alloc(7, 0xab));
      db = await laminardb.open(dir);
      db.close();
      const t0 = Date.now();
      while (warnings.length === 0 && Date.now() - t0 < 10000) await new Promise((r) => setTimeout(r, 10));
      fs.rmSync(dir, { recursive: true, force: true });
      console.log(JSON.stringify(warnings));
    })();`;
  const r = spawnSync(process.execPath, ['--no-warnings', '-e', script], { encoding: 'utf8', timeout: 30000 });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stderr, '');
  const warnings = JSON.parse(r.stdout.trim().split('\n').pop());
  assert.equal(warnings.length, 1, r.stdout);
  assert.equal(warnings[0].code, 'LAMINARDB_WARN');
  assert.match(warnings[0].message, /torn tail/);
});

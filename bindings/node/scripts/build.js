// Builds the native addon with cargo and puts it next to index.js as laminardb.node.
// LAMINAR_PROFILE=dev|release (default release); CARGO_TARGET_DIR is honoured; LAMINAR_FEATURES
// (e.g. "rocksdb") adds cargo features.
'use strict';
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const here = path.resolve(__dirname, '..');
const profile = process.env.LAMINAR_PROFILE || 'release';
const manifest = path.join(here, 'Cargo.toml');
// LAMINAR_FEATURES: cargo features, e.g. "rocksdb" for the RocksDB state backend.
const features = (process.env.LAMINAR_FEATURES || '').trim();
const featureArgs = features ? ['--features', features] : [];
execFileSync('cargo', ['build', '--manifest-path', manifest, '-p', 'laminardb-node', '--profile', profile, ...featureArgs], { stdio: 'inherit' });
const meta = JSON.parse(execFileSync('cargo', ['metadata', '--manifest-path', manifest, '--format-version', '1', '--no-deps'], { encoding: 'utf8' }));
const dir = path.join(meta.target_directory, profile === 'dev' ? 'debug' : profile);
const lib = process.platform === 'darwin' ? 'liblaminardb_node.dylib' : process.platform === 'win32' ? 'laminardb_node.dll' : 'liblaminardb_node.so';
fs.copyFileSync(path.join(dir, lib), path.join(here, 'laminardb.node'));
console.log(`laminardb: built ${path.join(here, 'laminardb.node')} (${profile})`);

'use strict';
// Copies the latest benchmark table (bench/results/results.md, written by
// `phaul-fast bench`) into README.md between the bench markers, so the README
// shows exactly what the harness measured.
const fs = require('node:fs');
const path = require('node:path');
const root = path.join(__dirname, '..');
const dir = process.argv[2] || 'bench/results';
const table = fs.readFileSync(path.join(root, dir, 'results.md'), 'utf8').trim();
const readme = path.join(root, 'README.md');
const text = fs.readFileSync(readme, 'utf8');
const start = '<!-- bench:start -->';
const end = '<!-- bench:end -->';
const a = text.indexOf(start);
const b = text.indexOf(end);
if (a < 0 || b < a) throw new Error('README.md has no bench markers');
const chart = `![pause against memory size per strategy](${dir}/pause-vs-memory.svg)`;
fs.writeFileSync(readme, `${text.slice(0, a + start.length)}\n${table}\n\n${chart}\n${text.slice(b)}`);
process.stdout.write(`README.md: bench table from ${dir}\n`);

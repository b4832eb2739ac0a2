'use strict';
// Copies the latest benchmark table (bench/results/results.md, written by
// `phaul-fast bench`) into README.md between the bench markers, so the README
// shows exactly what the harness measured. `node scripts/readme-bench.js DIR
// NAME` fills the block marked bench:NAME instead (e.g. containers, from
// `phaul-fast bench --containers --out bench/results-containers`).
const fs = require('node:fs');
const path = require('node:path');
const root = path.join(__dirname, '..');
const dir = process.argv[2] || 'bench/results';
const table = fs.readFileSync(path.join(root, dir, 'results.md'), 'utf8').trim();
const readme = path.join(root, 'README.md');
const text = fs.readFileSync(readme, 'utf8');
const name = process.argv[3];
const start = name ? `<!-- bench:${name}:start -->` : '<!-- bench:start -->';
const end = name ? `<!-- bench:${name}:end -->` : '<!-- bench:end -->';
const a = text.indexOf(start);
const b = text.indexOf(end);
if (a < 0 || b < a) throw new Error(`README.md has no ${start} ... ${end} markers`);
const chart = `![pause against memory size per strategy](${dir}/pause-vs-memory.svg)`;
fs.writeFileSync(readme, `${text.slice(0, a + start.length)}\n${table}\n\n${chart}\n${text.slice(b)}`);
process.stdout.write(`README.md: bench table from ${dir}\n`);

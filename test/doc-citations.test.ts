// Every document the code cites is in the repository, and every section of
// docs/DESIGN.md it cites by number exists: a maintainer can read the why.
import { test } from 'node:test';
import * as assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { PACKAGE_ROOT } from '../src/package-root';

function files(dir: string, out: string[] = []): string[] {
  for (const e of fs.readdirSync(path.join(PACKAGE_ROOT, dir), { withFileTypes: true })) {
    const rel = path.join(dir, e.name);
    if (e.isDirectory()) files(rel, out);
    else if (/\.(ts|cc|h|js|sh|c)$/.test(e.name)) out.push(rel);
  }
  return out;
}

test('code cites only documents that exist, and DESIGN.md sections that exist', () => {
  const design = fs.readFileSync(path.join(PACKAGE_ROOT, 'docs', 'DESIGN.md'), 'utf8');
  const sections = new Set([...design.matchAll(/^## (\d+)\. /gm)].map((m) => m[1]));
  assert.ok(sections.size >= 10, 'DESIGN.md has numbered sections');
  let cites = 0;
  for (const f of ['src', 'native', 'bench', 'test', 'scripts'].flatMap((d) => files(d))) {
    const text = fs.readFileSync(path.join(PACKAGE_ROOT, f), 'utf8');
    if (f !== path.join('test', 'doc-citations.test.ts'))
      assert.doesNotMatch(text, /(^|[^/\w.])design\.md/m, `${f} cites a design.md outside the repository`);
    for (const m of text.matchAll(/\b(?:docs\/)?([A-Z][A-Z_]+\.md)\b/g)) {
      const doc = m[1] === 'README.md' ? m[1] : path.join('docs', m[1]);
      assert.ok(fs.existsSync(path.join(PACKAGE_ROOT, doc)), `${f} cites ${m[0]}, which is not in the repository`);
    }
    for (const m of text.matchAll(/DESIGN\.md,?\s+(?:\/\/\s*|\*\s*)?sections?\s+(\d+)/g)) {
      cites++;
      assert.ok(sections.has(m[1]), `${f} cites docs/DESIGN.md section ${m[1]}, which does not exist`);
    }
  }
  assert.ok(cites >= 20, `code cites DESIGN.md sections (${cites} found)`);
});

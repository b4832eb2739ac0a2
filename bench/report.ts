// Output of a benchmark: a markdown table and an SVG chart of the pause
// against memory size per strategy (drawn by hand: no dependencies).
import type { Machine } from './machine';
import type { Row } from './runner';
import { ALL_STRATEGIES, type LinkName } from './matrix';
import { OUTSIDE_PAUSE } from '../src/agent/phases';
import { summarize } from './stats';

export function machineLine(m: Machine): string {
  return `${m.cpu}, ${m.cores} cores, ${m.memGiB} GiB, Linux ${m.kernel}, ${m.os}, CRIU ${m.criu}, Node ${m.node}, phaul-fast ${m.phaulFast}${typeof m.wpFaultUs === 'number' ? `, write-protect fault ${m.wpFaultUs} µs` : ''}`;
}

/** The strategy every other is compared with: CRIU's own stop-and-copy over its page server. */
export const BASELINE = 'criu:page-server';
/** A container's: its runtime's own checkpoint and restore over CRIU's page server. */
export const CONTAINER_BASELINE = 'runc:page-server';

const fmt = (x: number | null, scale = 1, digits = 0) => (x === null ? '' : (x / scale).toFixed(digits));

function cell(r: Row, k: keyof Row['spread'] & keyof Row, scale = 1, digits = 0): string {
  const v = r[k] as number | null | undefined;
  if (v === null || v === undefined) return '–';
  const s = r.spread[k];
  if (!s || r.runs < 2 || s.min === s.max) return fmt(v, scale, digits);
  return `${fmt(v, scale, digits)} (${fmt(s.min, scale, digits)}–${fmt(s.max, scale, digits)})`;
}

function ratio(r: Row): string {
  const q = r.pauseRatio;
  if (!q) return (r.strategy === BASELINE || r.strategy === CONTAINER_BASELINE) && r.status === 'ok' ? '1x' : '–';
  const f = (x: number) => x.toFixed(2);
  return q.min === q.max || r.runs < 2 ? `${f(q.median)}x` : `${f(q.median)}x (${f(q.min)}–${f(q.max)})`;
}

/** A markdown table's header row and its alignment row: text columns left, figures right. */
function tableHead(head: string[], isText: (col: number) => boolean): string[] {
  return [`| ${head.join(' | ')} |`, `|${head.map((_h, i) => (isText(i) ? '---' : '---:')).join('|')}|`];
}

export function markdown(rows: Row[], m: Machine, command: string, seconds: number): string {
  const head = ['workload', 'MiB', 'writes MB/s', 'link', 'strategy', 'pause ms', 'pause vs baseline', 'downtime ms', 'total ms',
    'sent MiB', 'rounds', 'source free ms', 'CPU s', 'CPU s/GiB', 'first pass MB/s', 'runs', 'status'];
  const lines = [
    `Measured ${m.date.slice(0, 10)} with \`${command}\` in ${Math.round(seconds)} s on: ${machineLine(m)}.`,
    '',
    'Medians over the runs, (min–max) when they differ. pause = the longest stall the workload itself saw',
    '(memcached: its client\'s service gap); downtime = the engine\'s frozen-to-running time; source free =',
    'until the source is no longer needed. Every run was verified on the destination; a cell that did not',
    `verify is marked failed and not averaged. pause vs baseline = this pause / the pause of ${BASELINE} (of ${CONTAINER_BASELINE}`,
    'for a container) on the same workload and link, run by run',
    '(strategies take turns), median (min–max): below 1x is shorter. See docs/BENCH.md for the definitions.',
    '',
    ...tableHead(head, (i) => i < 5 || i === head.length - 1),
  ];
  for (const r of rows) {
    const status = r.status === 'ok' ? 'ok' : `${r.status}${r.note ? `: ${r.note.replace(/\|/g, '/').slice(0, 200)}` : ''}`;
    lines.push(`| ${[r.workload, r.memMiB, r.writeMBps, r.link, r.strategy, cell(r, 'pauseMs'), ratio(r), cell(r, 'downtimeMs'),
      cell(r, 'totalMs'), cell(r, 'bytes', 2 ** 20), cell(r, 'rounds'), cell(r, 'sourceFreeMs'), cell(r, 'cpuS', 1, 2),
      cell(r, 'cpuSPerGiB', 1, 2), cell(r, 'copyMBps'), r.runs, status].join(' | ')} |`);
  }
  lines.push(...pauseBudget(rows));
  lines.push(...cpuTable(rows));
  lines.push(...fillTable(rows));
  return lines.join('\n') + '\n';
}

/**
 * Which side spent the CPU: the source's agent (or CRIU's dump) and the
 * destination's, each with the processes it waited for, in seconds and per
 * GiB sent (the main table's CPU s is their sum).
 */
function cpuTable(rows: Row[]): string[] {
  const ok = rows.filter((r) => r.status === 'ok' && r.cpuSourceS != null && r.cpuDestS != null);
  if (!ok.length) return [];
  const head = ['workload', 'MiB', 'writes MB/s', 'link', 'strategy', 'source CPU s', 'destination CPU s', 'source s/GiB', 'destination s/GiB',
    'in workload: source s', 'in workload: destination s', 'whole CPU s', 'whole s/GiB'];
  const perGiB = (r: Row, s: number | null | undefined) => (s != null && r.bytes ? (s / (r.bytes / 2 ** 30)).toFixed(2) : '–');
  return [
    '',
    'Where the CPU goes: the source\'s agent (or CRIU\'s dump) and the destination\'s agent (or CRIU\'s page server,',
    'lazy-pages daemon and restore), each with the processes it waited for; per GiB = over the median sent MiB.',
    'In workload: CPU the migration spent in the workload\'s own tasks, which no agent counts: at the source while',
    'frozen (CRIU\'s parasite), at the destination the restored tasks\' CPU when the migration ended (CRIU\'s restorer',
    'and the pages it reads in). Whole = CPU s of the main table plus both.',
    '',
    ...tableHead(head, (i) => i < 5),
    ...ok.map((r) => `| ${[r.workload, r.memMiB, r.writeMBps, r.link, r.strategy, cell(r, 'cpuSourceS', 1, 2), cell(r, 'cpuDestS', 1, 2),
      perGiB(r, r.cpuSourceS), perGiB(r, r.cpuDestS), cell(r, 'cpuWorkloadSourceS', 1, 2), cell(r, 'cpuWorkloadDestS', 1, 2),
      cell(r, 'cpuWholeS', 1, 2), perGiB(r, r.cpuWholeS)].join(' | ')} |`),
  ];
}

/**
 * The destination's side: its peak memory against the workload's, and for a
 * fill after resume (hybrid) how long it took against this machine writing
 * as much fresh memory (the floor for any fill), its rate, and how long a
 * fault waited.
 */
function fillTable(rows: Row[]): string[] {
  const ok = rows.filter((r) => r.status === 'ok' && r.destPeakMiB != null);
  if (!ok.length) return [];
  const head = ['workload', 'MiB', 'link', 'strategy', 'dest peak MiB', 'peak / workload', 'fresh write ms', 'fill ms',
    'fill / fresh', 'fill MB/s', 'fault p50 us', 'fault p99 us', 'fault max us'];
  const out = [
    '',
    'Destination: peak = page data on tmpfs (store or images) + the restored processes\' RSS, sampled every 100 ms;',
    'fresh write = this machine allocating and writing that much memory once, measured next to the runs;',
    'fill = from the restore\'s end until the lazy-pages server placed the last page (hybrid), fault = a fault\'s',
    'message to its page in place.',
    '',
    ...tableHead(head, (i) => i < 4),
  ];
  for (const r of ok) {
    const per = r.destPeakMiB != null ? `${(r.destPeakMiB / r.memMiB).toFixed(2)}x` : '–';
    const vsFresh = r.fillMs != null && r.freshWriteMs ? `${(r.fillMs / r.freshWriteMs).toFixed(2)}x` : '–';
    out.push(`| ${[r.workload, r.memMiB, r.link, r.strategy, cell(r, 'destPeakMiB'), per, r.freshWriteMs ?? '–', cell(r, 'fillMs'),
      vsFresh, cell(r, 'fillMBps'), cell(r, 'faultP50Us'), cell(r, 'faultP99Us'), cell(r, 'faultMaxUs')].join(' | ')} |`);
  }
  return out;
}

/**
 * Where each phaul-fast pause went: the median of every phase inside it
 * (src/agent/phases.ts), in the engine's order. Medians of parts need not
 * add up to the median downtime exactly.
 */
function pauseBudget(rows: Row[]): string[] {
  const withPhases = rows.filter((r) => r.status === 'ok' && r.phases);
  if (!withPhases.length) return [];
  const names: string[] = [];
  for (const r of withPhases) {
    for (const n of Object.keys(r.phases!)) if (!(OUTSIDE_PAUSE as readonly string[]).includes(n) && !names.includes(n)) names.push(n);
  }
  const head = ['workload', 'MiB', 'writes MB/s', 'link', 'strategy', 'downtime ms', ...names, 'criu-dump CPU ms', 'frozen round MiB', 'frozen round past dump ms'];
  // The frozen round per run (migrate --json frozenRound): its size, and how long it ran on after CRIU's images were ready.
  const frozen = (r: Row, f: (x: Record<string, number>) => number, digits: number) => {
    const s = summarize(r.samples.flatMap((x) => (x.frozenRound ? [f(x.frozenRound)] : [])));
    return s ? `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})` : '';
  };
  return [
    '',
    'Where the pause goes (phaul-fast): median ms of each phase between the freeze and the resume (docs/BENCH.md).',
    '',
    ...tableHead(head, (i) => i < 5),
    ...withPhases.map((r) => `| ${[r.workload, r.memMiB, r.writeMBps, r.link, r.strategy, fmt(r.downtimeMs),
      ...names.map((n) => (r.phases![n] === undefined ? '' : String(r.phases![n]))),
      r.criuDumpCpuMs == null ? '' : String(r.criuDumpCpuMs),
      frozen(r, (x) => x.bytes / 2 ** 20, 1), frozen(r, (x) => Math.max(0, x.endMs - x.criuDumpMs), 0)].join(' | ')} |`),
  ];
}

const COLORS: Record<string, string> = {
  'phaul-fast:stop-copy': '#1f77b4',
  'phaul-fast:precopy': '#2ca02c',
  'phaul-fast:hybrid': '#9467bd',
  'criu:page-server': '#d62728',
  'criu:lazy': '#ff7f0e',
  'criu:local': '#8c564b',
  'runc:page-server': '#e377c2',
  'podman:export': '#7f7f7f',
};

const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;');

/**
 * Pause (log scale) against memory size (log2 scale), one panel per link, one
 * line per strategy, memwork only. Where a size was measured at several write
 * rates, the panel uses the rate most rows share, so each line is one sweep.
 */
export function svgChart(rows: Row[], m: Machine): string {
  const ok = rows.filter((r) => r.status === 'ok' && r.workload === 'memwork' && r.pauseMs !== null);
  const links = [...new Set(ok.map((r) => r.link))] as LinkName[];
  const W = 380, H = 300, ML = 56, MR = 12, MT = 34, MB = 44, LEG = 190;
  const width = Math.max(1, links.length) * W + LEG;
  const height = H + 36;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="100%" height="100%" fill="white"/>`,
    `<text x="8" y="${height - 8}" fill="#555">${esc(`${m.date.slice(0, 10)} · ${machineLine(m)}`)}</text>`,
  ];
  if (ok.length === 0) out.push(`<text x="20" y="60">no verified memwork cells</text>`);
  const rates = new Map<number, number>();
  for (const r of ok) rates.set(r.writeMBps, (rates.get(r.writeMBps) ?? 0) + 1);
  const rate = [...rates.entries()].sort((a, b) => b[1] - a[1])[0]?.[0];
  const pts = ok.filter((r) => r.writeMBps === rate);
  const allY = pts.flatMap((r) => [r.spread.pauseMs?.min ?? r.pauseMs!, r.spread.pauseMs?.max ?? r.pauseMs!]).filter((y) => y > 0);
  const yLo = Math.pow(10, Math.floor(Math.log10(Math.max(0.5, Math.min(...allY, 10)))));
  const yHi = Math.pow(10, Math.ceil(Math.log10(Math.max(...allY, 100))));
  const sizes = [...new Set(pts.map((r) => r.memMiB))].sort((a, b) => a - b);
  const xLo = Math.log2(sizes[0] ?? 64) - 0.5, xHi = Math.log2(sizes[sizes.length - 1] ?? 4096) + 0.5;

  links.forEach((link, li) => {
    const ox = li * W;
    const X = (mib: number) => ox + ML + ((Math.log2(mib) - xLo) / (xHi - xLo)) * (W - ML - MR);
    const Y = (ms: number) => MT + (1 - (Math.log10(Math.max(ms, yLo)) - Math.log10(yLo)) / (Math.log10(yHi) - Math.log10(yLo))) * (H - MT - MB);
    out.push(`<text x="${ox + ML}" y="18" font-size="13" font-weight="bold">${esc(`pause vs memory, ${link}, writes ${rate} MB/s`)}</text>`);
    out.push(`<rect x="${ox + ML}" y="${MT}" width="${W - ML - MR}" height="${H - MT - MB}" fill="none" stroke="#999"/>`);
    for (let d = yLo; d <= yHi * 1.001; d *= 10) {
      out.push(`<line x1="${ox + ML}" x2="${ox + W - MR}" y1="${Y(d)}" y2="${Y(d)}" stroke="#eee"/>`);
      out.push(`<text x="${ox + ML - 4}" y="${Y(d) + 4}" text-anchor="end">${d >= 1000 ? `${d / 1000} s` : `${d} ms`}</text>`);
    }
    for (const s of sizes) {
      out.push(`<line x1="${X(s)}" x2="${X(s)}" y1="${MT}" y2="${H - MB}" stroke="#eee"/>`);
      out.push(`<text x="${X(s)}" y="${H - MB + 14}" text-anchor="middle">${s >= 1024 ? `${s / 1024} GiB` : `${s} MiB`}</text>`);
    }
    out.push(`<text x="${ox + ML + (W - ML - MR) / 2}" y="${H - 10}" text-anchor="middle">memory size</text>`);
    for (const strat of ALL_STRATEGIES) {
      const line = pts.filter((r) => r.link === link && r.strategy === strat).sort((a, b) => a.memMiB - b.memMiB);
      if (!line.length) continue;
      const c = COLORS[strat];
      if (line.length > 1) out.push(`<polyline fill="none" stroke="${c}" stroke-width="2" points="${line.map((r) => `${X(r.memMiB).toFixed(1)},${Y(r.pauseMs!).toFixed(1)}`).join(' ')}"/>`);
      for (const r of line) {
        const s = r.spread.pauseMs;
        if (s) out.push(`<line x1="${X(r.memMiB)}" x2="${X(r.memMiB)}" y1="${Y(s.min)}" y2="${Y(s.max)}" stroke="${c}"/>`);
        out.push(`<circle cx="${X(r.memMiB).toFixed(1)}" cy="${Y(r.pauseMs!).toFixed(1)}" r="3.5" fill="${c}"><title>${esc(`${strat} ${r.memMiB} MiB ${link}: ${r.pauseMs} ms`)}</title></circle>`);
      }
    }
  });
  const present = ALL_STRATEGIES.filter((s) => pts.some((r) => r.strategy === s));
  present.forEach((s, i) => {
    const x = links.length * W + 10, y = MT + 10 + i * 18;
    out.push(`<rect x="${x}" y="${y - 8}" width="14" height="4" fill="${COLORS[s]}"/><text x="${x + 20}" y="${y}">${esc(s)}</text>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}

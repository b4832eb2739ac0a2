// A small, strict argument parser: unknown flags and missing values are usage
// errors (exit 2) with one clear line, never a stack trace.
import { PhaulError } from '../errors';

export interface FlagSpec {
  /** 'string' takes a value, 'boolean' does not. */
  type: 'string' | 'boolean';
  help: string;
  default?: string;
}

export interface Parsed {
  flags: Record<string, string | boolean | undefined>;
  positionals: string[];
}

export function parseArgs(argv: string[], spec: Record<string, FlagSpec>): Parsed {
  const flags: Record<string, string | boolean | undefined> = {};
  const positionals: string[] = [];
  for (const [k, s] of Object.entries(spec)) if (s.default !== undefined) flags[k] = s.default;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--') { positionals.push(...argv.slice(i + 1)); break; }
    if (!a.startsWith('--')) { positionals.push(a); continue; }
    const eq = a.indexOf('=');
    const name = eq > 0 ? a.slice(2, eq) : a.slice(2);
    const s = spec[name];
    if (!s) throw new PhaulError('usage', `unknown option --${name} (see --help)`);
    if (s.type === 'boolean') {
      if (eq > 0) throw new PhaulError('usage', `--${name} takes no value`);
      flags[name] = true;
    } else {
      const v = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (v === undefined || (eq < 0 && v.startsWith('--'))) throw new PhaulError('usage', `--${name} needs a value`);
      flags[name] = v;
    }
  }
  return { flags, positionals };
}

export function formatHelp(usage: string, about: string, spec: Record<string, FlagSpec>): string {
  const rows = Object.entries(spec).map(([k, s]) => {
    const left = `  --${k}${s.type === 'string' ? ' VALUE' : ''}`;
    const def = s.default !== undefined ? ` (default ${s.default})` : '';
    return `${left.padEnd(30)} ${s.help}${def}`;
  });
  const help = spec.help ? '' : '  --help                         this text\n';
  return `usage: ${usage}\n\n${about}\n\noptions:\n${rows.join('\n')}\n${help}`;
}

/** Parses a positive integer flag; a usage error names the flag otherwise. */
export function intFlag(v: string | boolean | undefined, name: string, min = 0, max = Number.MAX_SAFE_INTEGER): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'string' || !/^\d+$/.test(v)) throw new PhaulError('usage', `--${name} must be a whole number, got '${v}'`);
  const n = Number(v);
  if (n < min || n > max) throw new PhaulError('usage', `--${name} must be between ${min} and ${max}, got ${n}`);
  return n;
}

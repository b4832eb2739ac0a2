import { PhaulError } from '../errors';

/** "host:port" or "[v6]:port" -> parts; a usage error names the flag otherwise. */
export function parseHostPort(s: string, flag: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(s);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 0 || port > 65535) throw new PhaulError('usage', `${flag} must be HOST:PORT, got '${s}'`);
  return { host: m[1] ?? m[2], port };
}

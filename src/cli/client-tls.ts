// The source's TLS flags (migrate, resolve): --encrypt, or --tls [--tls-ca F] [--tls-servername N].
import * as fs from 'node:fs';
import { PhaulError } from '../errors';
import type { ClientTls } from '../protocol/secure-channel';

export const CLIENT_TLS_FLAGS = {
  encrypt: { type: 'boolean', help: 'TLS keyed by the token (no certificate or CA); the destination runs serve --encrypt' },
  tls: { type: 'boolean', help: 'connect with TLS' },
  'tls-ca': { type: 'string', help: 'PEM CA (or self-signed certificate) that the destination\'s certificate must chain to' },
  'tls-servername': { type: 'string', help: 'name to check the destination\'s certificate against' },
} as const;

export function clientTls(flags: Record<string, string | boolean | undefined>): ClientTls | undefined {
  if (flags.encrypt && (flags.tls || flags['tls-ca'])) throw new PhaulError('usage', '--encrypt and --tls are alternatives: pick one');
  if (flags.encrypt) return { psk: true };
  if (!flags.tls && !flags['tls-ca']) return undefined;
  let ca: Buffer | undefined;
  if (flags['tls-ca']) {
    try { ca = fs.readFileSync(flags['tls-ca'] as string); } catch { throw new PhaulError('usage', `cannot read ${flags['tls-ca']}`); }
  }
  return { ca, servername: flags['tls-servername'] as string | undefined };
}

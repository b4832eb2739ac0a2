// Mutual challenge-response authentication with a shared token. The token
// never crosses the wire: each side proves it knows the token with an HMAC over
// both sides' fresh nonces, bound to the connection's role and session, so a
// recorded exchange cannot be replayed and a data connection cannot be moved
// to another session.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { PhaulError } from '../errors';
import { bin, FrameConn, int, Message, str } from './frames';

export const PROTOCOL_VERSION = 1;
const NONCE = 32;

export type Role = 'control' | 'data';

function mac(token: Buffer, label: string, ...parts: (Buffer | string)[]): Buffer {
  const h = crypto.createHmac('sha256', token);
  h.update(label);
  for (const p of parts) {
    const b = typeof p === 'string' ? Buffer.from(p) : p;
    const len = Buffer.alloc(4);
    len.writeUInt32BE(b.length);
    h.update(len);
    h.update(b);
  }
  return h.digest();
}

function same(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/** Reads a token file: at least 16 bytes of secret, surrounding whitespace ignored. */
export function readToken(file: string): Buffer {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new PhaulError('usage', `cannot read token file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (text.length < 16) throw new PhaulError('usage', `token in ${file} is too short (need at least 16 characters)`);
  return Buffer.from(text);
}

/** Client side: proves itself and checks the server's proof. Returns the session id. */
export async function authenticateClient(conn: FrameConn, token: Buffer, role: Role, session = ''): Promise<string> {
  const cn = crypto.randomBytes(NONCE);
  conn.send({ t: 'hello', proto: PROTOCOL_VERSION, role, session, nonce: cn });
  const ch = await conn.expect('challenge', 15_000);
  const sn = bin(ch, 'nonce', NONCE);
  if (sn.length !== NONCE) throw new PhaulError('protocol', 'server nonce has the wrong size');
  if (!same(bin(ch, 'proof', 64), mac(token, 'phaul-fast server', cn, sn, role, session)))
    throw new PhaulError('auth', `${conn.peer} does not know our token (wrong token, or not a phaul-fast agent)`);
  conn.send({ t: 'auth', mac: mac(token, 'phaul-fast client', sn, cn, role, session) });
  const w = await conn.expect('welcome', 15_000);
  return str(w, 'session', 128);
}

/** Server side: checks the client's proof. Returns its role and session. */
export async function authenticateServer(conn: FrameConn, token: Buffer): Promise<{ role: Role; session: string }> {
  const hello = await conn.expect('hello', 15_000);
  const proto = int(hello, 'proto', 0, 1 << 30);
  if (proto !== PROTOCOL_VERSION) {
    conn.send({ t: 'error', code: 'incompatible', message: `protocol ${proto} is not supported (this agent speaks ${PROTOCOL_VERSION})` });
    throw new PhaulError('incompatible', `client speaks protocol ${proto}`);
  }
  const role = str(hello, 'role', 16);
  if (role !== 'control' && role !== 'data') throw new PhaulError('protocol', `unknown role '${role}'`);
  const session = str(hello, 'session', 128);
  const cn = bin(hello, 'nonce', NONCE);
  if (cn.length !== NONCE) throw new PhaulError('protocol', 'client nonce has the wrong size');
  const sn = crypto.randomBytes(NONCE);
  conn.send({ t: 'challenge', nonce: sn, proof: mac(token, 'phaul-fast server', cn, sn, role, session) });
  const a: Message = await conn.expect('auth', 15_000);
  if (!same(bin(a, 'mac', 64), mac(token, 'phaul-fast client', sn, cn, role, session))) {
    conn.send({ t: 'error', code: 'auth', message: 'authentication failed: wrong token' });
    throw new PhaulError('auth', 'a client failed authentication (wrong token)');
  }
  return { role, session };
}

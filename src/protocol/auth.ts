// Mutual authentication with a shared token, and the keys that protect the
// connection afterwards. The token never crosses the wire, and the exchange
// gives nobody anything to test token guesses against:
// - each side sends a fresh nonce and an ephemeral X25519 public key; both
//   proofs are HMACs under a key derived from the token *and* the
//   Diffie-Hellman secret, which an eavesdropper cannot compute;
// - the client proves first: a caller without the token gets only a nonce
//   and a public key from the server, never a proof.
// The same derivation yields one MAC key per direction for every later frame
// (frames.ts `protect`), bound to the role and session, so a recorded
// exchange cannot be replayed and a data connection cannot be moved to
// another session.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import { PhaulError } from '../errors';
import { bin, FrameConn, FrameKeys, int, Message, str } from './frames';

export const PROTOCOL_VERSION = 4;
const NONCE = 32;
const X25519_PUB = 32;
/** 32 characters: a generated token (`phaul-fast token`) has 64 hex digits, 256 bits. */
export const MIN_TOKEN_CHARS = 32;
/** The whole handshake, from accept to welcome; a peer slower than this is cut off. */
export const HANDSHAKE_MS = 10_000;

/** control: a new session; data: one of its data connections; resolve: asks about (and may decide) a session
 *  whose source lost its control connection (src/agent/resolve.ts). */
export type Role = 'control' | 'data' | 'resolve';

function lp(...parts: (Buffer | string)[]): Buffer[] {
  const out: Buffer[] = [];
  for (const p of parts) {
    const b = typeof p === 'string' ? Buffer.from(p) : p;
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(b.length);
    out.push(len, b);
  }
  return out;
}

function hmac(key: Buffer, ...parts: (Buffer | string)[]): Buffer {
  const h = crypto.createHmac('sha256', key);
  for (const b of lp(...parts)) h.update(b);
  return h.digest();
}

function same(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/** A fresh X25519 key pair; the public half as its 32 raw bytes. */
function ephemeral(): { priv: crypto.KeyObject; pub: Buffer } {
  const { privateKey, publicKey } = crypto.generateKeyPairSync('x25519');
  return { priv: privateKey, pub: Buffer.from(publicKey.export({ format: 'jwk' }).x as string, 'base64url') };
}

function sharedSecret(priv: crypto.KeyObject, peerPub: Buffer): Buffer {
  if (peerPub.length !== X25519_PUB) throw new PhaulError('protocol', 'peer key exchange value has the wrong size');
  try {
    const pub = crypto.createPublicKey({ key: { kty: 'OKP', crv: 'X25519', x: peerPub.toString('base64url') }, format: 'jwk' });
    return crypto.diffieHellman({ privateKey: priv, publicKey: pub });
  } catch {
    // OpenSSL refuses low-order points (an all-zero secret).
    throw new PhaulError('protocol', 'peer key exchange value is invalid');
  }
}

interface Transcript {
  role: Role;
  session: string;
  cn: Buffer;
  sn: Buffer;
  cpub: Buffer;
  spub: Buffer;
}

/** The key both proofs and both frame keys come from: the token, the DH secret and everything exchanged. */
function handshakeKey(token: Buffer, shared: Buffer, t: Transcript): Buffer {
  const th = crypto.createHash('sha256');
  for (const b of lp(`phaul-fast ${PROTOCOL_VERSION}`, t.role, t.session, t.cn, t.sn, t.cpub, t.spub)) th.update(b);
  return hmac(token, 'phaul-fast handshake key', shared, th.digest());
}

function frameKeys(k: Buffer, side: 'client' | 'server'): FrameKeys {
  const c2s = hmac(k, 'client to server');
  const s2c = hmac(k, 'server to client');
  return side === 'client' ? { send: c2s, receive: s2c } : { send: s2c, receive: c2s };
}

/**
 * Reads a token file. Refuses one that group or others can read (anyone who
 * reads it can restore code of their choice as root at every destination
 * that accepts it) and one shorter than MIN_TOKEN_CHARS; each refusal says how
 * to fix it. Surrounding whitespace is ignored.
 */
export function readToken(file: string): Buffer {
  let text: string;
  let mode: number;
  try {
    mode = fs.statSync(file).mode;
    text = fs.readFileSync(file, 'utf8').trim();
  } catch (e) {
    throw new PhaulError('usage', `cannot read token file ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  if (mode & 0o077)
    throw new PhaulError('usage', `token file ${file} is readable by group or others (mode ${(mode & 0o777).toString(8)}): run chmod 600 ${file}`);
  if (text.length < MIN_TOKEN_CHARS)
    throw new PhaulError('usage', `token in ${file} is too short (${text.length} characters, need at least ${MIN_TOKEN_CHARS}): ` +
      `make a new one with phaul-fast token --out FILE`);
  return Buffer.from(text);
}

/** A new random token: 256 bits as 64 hex digits. */
export function newToken(): string {
  return crypto.randomBytes(32).toString('hex');
}

/** Client side: proves itself first, then checks the server's proof; protects the connection. Returns the session id. */
export async function authenticateClient(conn: FrameConn, token: Buffer, role: Role, session = ''): Promise<string> {
  const deadline = Date.now() + HANDSHAKE_MS;
  const left = () => Math.max(1, deadline - Date.now());
  const cn = crypto.randomBytes(NONCE);
  const kx = ephemeral();
  conn.send({ t: 'hello', proto: PROTOCOL_VERSION, role, session, nonce: cn, kx: kx.pub });
  const ch = await conn.expect('challenge', left());
  const sn = bin(ch, 'nonce', NONCE);
  if (sn.length !== NONCE) throw new PhaulError('protocol', 'server nonce has the wrong size');
  const spub = bin(ch, 'kx', X25519_PUB);
  const k = handshakeKey(token, sharedSecret(kx.priv, spub), { role, session, cn, sn, cpub: kx.pub, spub });
  conn.send({ t: 'auth', mac: hmac(k, 'client proof') });
  // A server without our token cannot answer; one that refuses ours says so with an error (exit 4).
  const w = await conn.expect('welcome', left());
  const given = str(w, 'session', 128);
  if (!same(bin(w, 'proof', 64), hmac(k, 'server proof', given)))
    throw new PhaulError('auth', `${conn.peer} does not know our token (wrong token, or not a phaul-fast agent)`);
  if (role !== 'control' && given !== session) throw new PhaulError('protocol', `${conn.peer} answered for another session`);
  conn.protect(frameKeys(k, 'client'));
  return given;
}

/**
 * Server side, in two steps so the caller can pick the session before
 * welcoming: `authenticateServer` checks the client's proof and returns its
 * role and requested session; `welcome` answers with the session and the
 * server's proof and protects the connection.
 */
export interface ServerAuth {
  role: Role;
  session: string;
  welcome(session: string): void;
}

export async function authenticateServer(conn: FrameConn, token: Buffer, timeoutMs = HANDSHAKE_MS): Promise<ServerAuth> {
  const deadline = Date.now() + timeoutMs;
  const left = () => Math.max(1, deadline - Date.now());
  const hello = await conn.expect('hello', left());
  const proto = int(hello, 'proto', 0, 1 << 30);
  if (proto !== PROTOCOL_VERSION) {
    conn.send({ t: 'error', code: 'incompatible', message: `protocol ${proto} is not supported (this agent speaks ${PROTOCOL_VERSION})` });
    throw new PhaulError('incompatible', `client speaks protocol ${proto}`);
  }
  const role = str(hello, 'role', 16);
  if (role !== 'control' && role !== 'data' && role !== 'resolve') throw new PhaulError('protocol', `unknown role '${role}'`);
  const session = str(hello, 'session', 128);
  const cn = bin(hello, 'nonce', NONCE);
  if (cn.length !== NONCE) throw new PhaulError('protocol', 'client nonce has the wrong size');
  const cpub = bin(hello, 'kx', X25519_PUB);
  const sn = crypto.randomBytes(NONCE);
  const kx = ephemeral();
  const k = handshakeKey(token, sharedSecret(kx.priv, cpub), { role, session, cn, sn, cpub, spub: kx.pub });
  conn.send({ t: 'challenge', nonce: sn, kx: kx.pub });
  const a: Message = await conn.expect('auth', left());
  if (!same(bin(a, 'mac', 64), hmac(k, 'client proof'))) {
    conn.send({ t: 'error', code: 'auth', message: 'authentication failed: wrong token' });
    throw new PhaulError('auth', 'a client failed authentication (wrong token)');
  }
  return {
    role,
    session,
    welcome(given: string) {
      conn.send({ t: 'welcome', session: given, proof: hmac(k, 'server proof', given) });
      conn.protect(frameKeys(k, 'server'));
    },
  };
}

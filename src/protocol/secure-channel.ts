// TLS around every connection, in one of two forms:
// - certificate TLS (serve --tls-cert/--tls-key, migrate --tls [--tls-ca]);
// - pre-shared-key TLS (serve/migrate --encrypt): TLS 1.2 ECDHE-PSK with
//   ChaCha20-Poly1305, the key derived from the token. No CA and no
//   certificate: whoever holds the token is the peer. The ECDHE part keeps
//   recorded traffic secret if the token leaks later, and gives an
//   eavesdropper nothing to test token guesses against.
// Authentication (auth.ts) runs inside either, unchanged.
import * as crypto from 'node:crypto';
import type * as net from 'node:net';
import type * as tls from 'node:tls';

/** node:tls, loaded on first use: a migration over plain TCP never needs it (~7 ms of start-up CPU). */
const tlsModule = (): typeof tls => require('node:tls') as typeof tls;

/** Whether a socket is a TLS one (without loading node:tls to ask instanceof). */
export function isTlsSocket(sock: net.Socket): sock is tls.TLSSocket {
  return (sock as { encrypted?: boolean }).encrypted === true;
}

const PSK_CIPHERS = 'ECDHE-PSK-CHACHA20-POLY1305';
const PSK_IDENTITY = 'phaul-fast';

export type ServerTls = { cert: Buffer; key: Buffer } | { psk: true };
export type ClientTls = { ca?: Buffer; insecure?: boolean; servername?: string } | { psk: true };

export function pskFromToken(token: Buffer): Buffer {
  return crypto.createHmac('sha256', token).update('phaul-fast tls-psk v1').digest();
}

/** Wraps an accepted socket; 'secure' fires when the TLS handshake is done. */
export function wrapServerSocket(raw: net.Socket, opts: ServerTls, token: Buffer): tls.TLSSocket {
  if ('psk' in opts) {
    const psk = pskFromToken(token);
    const tls = tlsModule();
    return new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: tls.createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }),
      pskCallback: (_sock: tls.TLSSocket, identity: string) => (identity === PSK_IDENTITY ? psk : null),
    } as tls.TLSSocketOptions);
  }
  const tls = tlsModule();
  return new tls.TLSSocket(raw, { isServer: true, secureContext: tls.createSecureContext({ cert: opts.cert, key: opts.key }) });
}

/** Connects with TLS; 'secureConnect' fires when the handshake is done. */
export function connectTls(host: string, port: number, opts: ClientTls, token: Buffer): tls.TLSSocket {
  const tls = tlsModule();
  if ('psk' in opts) {
    const psk = pskFromToken(token);
    return tls.connect({
      host, port, ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2',
      pskCallback: () => ({ psk, identity: PSK_IDENTITY }),
      checkServerIdentity: () => undefined,
    });
  }
  return tls.connect({ host, port, ca: opts.ca, rejectUnauthorized: !opts.insecure, servername: opts.servername });
}

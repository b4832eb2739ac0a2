// The source's connections to a destination agent (migrate's control and data
// connections, resolve's): plain TCP or TLS, no Nagle, keepalive on.
import * as net from 'node:net';
import { PhaulError } from '../errors';
import { FrameConn } from '../protocol/frames';
import { type ClientTls, connectTls } from '../protocol/secure-channel';
import { setUserTimeout } from '../native/socket-opts';

/**
 * Both agents' sockets drop a connection whose sent data has gone
 * unacknowledged this long (TCP_USER_TIMEOUT; keepalive covers idle ones):
 * a partition while bytes are in flight ends in seconds, within the default
 * freeze budget (30 s), not after TCP's ~15 minutes of retransmissions.
 */
export const TCP_USER_TIMEOUT_MS = 15_000;

/** Keepalive and the user timeout on an agent's socket (both ends). */
export function boundSilence(sock: net.Socket): void {
  sock.setKeepAlive(true, 5000);
  setUserTimeout(sock, TCP_USER_TIMEOUT_MS);
}

export function connectDestination(to: { host: string; port: number }, token: Buffer, tls: ClientTls | undefined,
  timeoutMs = 10_000): Promise<FrameConn> {
  const peer = `destination ${to.host}:${to.port}`;
  return new Promise((resolve, reject) => {
    const sock = tls ? connectTls(to.host, to.port, tls, token) : net.connect({ host: to.host, port: to.port });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new PhaulError('network', `cannot reach ${peer}: timed out`));
    }, timeoutMs);
    sock.once(tls ? 'secureConnect' : 'connect', () => {
      clearTimeout(timer);
      sock.removeAllListeners('error');
      (sock as net.Socket).setNoDelay(true);
      // A peer gone silent (a partition) is noticed while we wait, not after TCP's ~15 min.
      boundSilence(sock as net.Socket);
      resolve(new FrameConn(sock, peer));
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new PhaulError('network', `cannot reach ${peer}: ${e.code ?? e.message}`));
    });
  });
}

// The source's connections to a destination agent (migrate's control and data
// connections, resolve's): plain TCP or TLS, no Nagle, keepalive on.
import * as net from 'node:net';
import { PhaulError } from '../errors';
import { FrameConn } from '../protocol/frames';
import { type ClientTls, connectTls } from '../protocol/secure-channel';

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
      (sock as net.Socket).setKeepAlive(true, 5000);
      resolve(new FrameConn(sock, peer));
    });
    sock.once('error', (e: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new PhaulError('network', `cannot reach ${peer}: ${e.code ?? e.message}`));
    });
  });
}

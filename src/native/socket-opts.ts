// native/socket_opts.cc: socket options Node does not expose.
import type { Socket } from 'node:net';
import { addon } from './index';

export interface SocketOptsNative {
  /** TCP_USER_TIMEOUT on fd: unacknowledged data older than ms drops the connection. Throws on failure. */
  setTcpUserTimeout(fd: number, ms: number): void;
}

/** The descriptor under a Node socket (a TLS socket's is its TCP handle's), or undefined. */
function fdOf(sock: Socket): number | undefined {
  const h = (sock as unknown as { _handle?: { fd?: number; _parent?: { fd?: number } } })._handle;
  const fd = h?.fd ?? h?._parent?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : undefined;
}

/**
 * Bounds how long sock's sent data may go unacknowledged (a partition while
 * we send) to ms; returns false where it cannot (no addon, no descriptor):
 * the caller's own deadlines still hold then.
 */
export function setUserTimeout(sock: Socket, ms: number): boolean {
  const fd = fdOf(sock);
  if (fd === undefined) return false;
  try {
    addon().setTcpUserTimeout(fd, ms);
    return true;
  } catch {
    return false;
  }
}

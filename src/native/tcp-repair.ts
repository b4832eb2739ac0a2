// What native/tcp_repair.cc exports.

export interface TcpRepairNative {
  /** Takes every TCP socket of `pid` out of repair mode (TCP_REPAIR_OFF); counts what it saw and released. */
  tcpRepairOff(pid: number): { sockets: number; released: number };
}

// What native/splice_relay.cc exports: a thread that moves bytes between CRIU's
// end of a socketpair and a TCP socket with splice(2), no user-space copy.

export interface Relay {
  /** Give this to CRIU as its page-server socket. */
  criuFd: number;
  /** Write end of the wake-up pipe: abortRelay(abortFd) stops the relay. */
  abortFd: number;
  done: Promise<{ sent: number; received: number }>;
}

export interface SpliceRelayNative {
  /** Takes ownership of tcpFd. */
  startRelay(tcpFd: number): Relay;
  abortRelay(abortFd: number): void;
}

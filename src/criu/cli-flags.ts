// The options a migration passes through to CRIU, as CRIU's command line takes them.

export interface CriuFlags {
  tcpEstablished?: boolean;
  /** Established TCP connections are dumped and restored closed (their peers see them end). */
  tcpClose?: boolean;
  extUnixSk?: boolean;
  shellJob?: boolean;
  fileLocks?: boolean;
  linkRemap?: boolean;
}

/** The command-line options of a dump's or restore's flags. */
export function criuFlagArgs(f: CriuFlags): string[] {
  const args: string[] = [];
  if (f.tcpEstablished) args.push('--tcp-established', '--network-lock', 'nftables');
  if (f.tcpClose) args.push('--tcp-close');
  if (f.extUnixSk) args.push('--ext-unix-sk');
  if (f.shellJob) args.push('--shell-job');
  if (f.fileLocks) args.push('--file-locks');
  if (f.linkRemap) args.push('--link-remap');
  return args;
}

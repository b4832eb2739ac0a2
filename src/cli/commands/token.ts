// `phaul-fast token`: writes a fresh random token (256 bits) to a new file with mode 0600.
import * as fs from 'node:fs';
import { formatHelp, parseArgs } from '../args';
import { PhaulError } from '../../errors';
import { newToken } from '../../protocol/auth';

const spec = {
  out: { type: 'string', help: 'file to create (mode 0600); copy it to both hosts, readable by root only' },
  force: { type: 'boolean', help: 'replace an existing file' },
  help: { type: 'boolean', help: 'this text' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const { flags } = parseArgs(argv, spec);
  if (flags.help) {
    process.stdout.write(formatHelp('phaul-fast token --out FILE [--force]',
      'Writes a new random token (64 hex digits, 256 bits) for serve and migrate --token-file. Anyone holding\n' +
      'it can restore processes as root on every destination that accepts it: one token per source host\n' +
      '(docs/SECURITY.md).', spec));
    return 0;
  }
  if (typeof flags.out !== 'string') throw new PhaulError('usage', '--out is required (see --help)');
  const file = flags.out;
  if (flags.force) fs.rmSync(file, { force: true });
  let fd: number;
  try {
    // O_EXCL: never write a secret through a file (or link) someone else put there.
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') throw new PhaulError('usage', `${file} exists: pick another name, or --force to replace it`);
    throw new PhaulError('usage', `cannot create ${file}: ${code ?? (e as Error).message}`);
  }
  try {
    fs.fchmodSync(fd, 0o600); // the umask may have taken bits away, never added: make it exact
    fs.writeSync(fd, newToken() + '\n');
  } finally {
    fs.closeSync(fd);
  }
  process.stderr.write(`phaul-fast token: wrote a new token to ${file} (mode 0600)\n`);
  return 0;
}

import { PhaulError } from '../../errors';

export async function run(argv: string[]): Promise<number> {
  throw new PhaulError('unavailable', 'check is not implemented yet');
}

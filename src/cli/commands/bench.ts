import { PhaulError } from '../../errors';

export async function run(argv: string[]): Promise<number> {
  throw new PhaulError('unavailable', 'bench is not implemented yet');
}

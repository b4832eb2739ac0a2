import { PhaulError } from '../../errors';

export async function run(argv: string[]): Promise<number> {
  throw new PhaulError('unavailable', 'migrate is not implemented yet');
}

// The CRIU binary tests run, or why there is none (a test's skip reason).
import { criuBinary } from '../../src/criu/binary';

export let criu: string | undefined;
export let noCriu = '';
try {
  criu = criuBinary();
} catch (err) {
  noCriu = `no CRIU binary (${(err as Error).message}): run npm run setup`;
}

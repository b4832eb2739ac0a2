// The links of the matrix: loopback (one namespace, 127.0.0.1) and a veth
// pair between two namespaces shaped with tc tbf.
import { createLoopbackHost, createTwoHosts, type TwoHosts } from '../src/testing/hosts';
import { LINKS, type LinkName } from './matrix';

export async function openLink(name: LinkName): Promise<TwoHosts> {
  const rate = LINKS[name];
  if (rate === null) return createLoopbackHost({ prefix: 'pfbench' });
  return createTwoHosts({ prefix: 'pfbench', rateMbit: rate });
}

// Strategy name -> peer.
import type { StrategyName } from '../matrix';
import { CriuLazy } from './criu-lazy';
import { CriuLocal } from './criu-local';
import { CriuPageServer } from './criu-page-server';
import { PhaulFastPeer } from './phaul-fast';
import type { Peer } from './types';

export function makePeer(name: StrategyName): Peer {
  if (name === 'criu:page-server') return new CriuPageServer();
  if (name === 'criu:lazy') return new CriuLazy();
  if (name === 'criu:local') return new CriuLocal();
  return new PhaulFastPeer(name.slice('phaul-fast:'.length));
}

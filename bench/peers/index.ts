// Strategy name -> peer.
import type { StrategyName } from '../matrix';
import { CriuLazy } from './criu-lazy';
import { CriuLocal } from './criu-local';
import { CriuPageServer } from './criu-page-server';
import { PhaulFastPeer } from './phaul-fast';
import { PodmanExport } from './podman-export';
import { RuncPageServer } from './runc-page-server';
import type { Peer } from './types';

export function makePeer(name: StrategyName): Peer {
  if (name === 'criu:page-server') return new CriuPageServer();
  if (name === 'criu:lazy') return new CriuLazy();
  if (name === 'criu:local') return new CriuLocal();
  if (name === 'runc:page-server') return new RuncPageServer();
  if (name === 'podman:export') return new PodmanExport();
  return new PhaulFastPeer(name.slice('phaul-fast:'.length));
}

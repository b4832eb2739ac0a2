// The container runtimes a source can move from; a module of its own so the
// CLI can check --runtime without loading the container code.
export type Runtime = 'runc' | 'podman';
export const RUNTIMES: readonly Runtime[] = ['runc', 'podman'];

// phaul-fast's library API, for daemons that embed the engine. No globals: each
// Migration and DestinationAgent is independent; both are EventEmitters.
//
//   import { Migration, DestinationAgent, readToken } from 'phaul-fast';
//   const m = new Migration({ pid, to: { host, port }, token: readToken(file) });
//   m.on('phase', (e) => console.log(e.phase, e.ms));
//   const report = await m.run();          // throws MigrationError (with .rolledBack)
export { Migration, MigrationError, migrate } from './agent/migrate';
export type { MigrateOptions, MigrationReport, FailureReport, PhaseEvent, SourceStateEvent } from './agent/migrate';
export { AUTO_ORDER, MODES } from './agent/capabilities';
export type { Mode } from './agent/capabilities';
export { DestinationAgent } from './agent/destination';
export type { DestinationOptions, SessionStateEvent } from './agent/destination';
export { readToken, PROTOCOL_VERSION } from './protocol/auth';
export { PhaulError, ExitCode } from './errors';
export type { ErrorCode } from './errors';
export { VERSION } from './version';

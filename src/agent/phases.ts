// The names of a migration's phases (`migrate --json` phases, the bench's
// pause budget). Each phase is the time since the previous one ended, so the
// phases from the freeze to the commit add up to the downtime.
//
// Pre-copy and hybrid, in order:
//   connect, handshake          reaching the destination, data connections
//   bundle                      a container: the first round of its bundle's files (it runs)
//   precopy                     the rounds, the workload running
//   criu-freeze                 CRIU (started before the rounds, held at its log FIFO: criu/gate.ts)
//                               sets up and freezes the tree; the workload still runs
//   --- the pause: from the tree frozen ---
//   criu-dump                   CRIU's dump of everything but lazy memory; meanwhile the pages
//                               written since the last round are read, sent and stored
//   images                      CRIU's images sent to the destination
//   frozen-pages                the rest of that round, if CRIU's dump did not hide all of it
//   final-scan                  what that round could not see (new mappings, shared and untracked
//                               memory) found
//   final-pages                 ... read and sent
//   final-stored                ... and the switchover sent right behind them (the wait for
//                               the store to hold them is the destination's store-flush)
//   store-flush, compose,       measured by the destination (DESTINATION_PHASES):
//   lazy-pages, criu-restore      the final round stored and the store's last writes, the images composed from it,
//                                 the lazy-pages daemon ready (hybrid), CRIU's restore
//   restore                     the rest of the restore's round trip (messages)
//   commit                      the destination resumes the tree and says it runs
//   --- the pause ends ---
//   fill                        hybrid: until the destination's memory is complete
// Stop-copy: connect, handshake, criu-start (CRIU to the freeze), dump (CRIU
// dumps into the page server, frozen), images, the destination's phases,
// restore, commit.

/** What the destination reports in `restored.phases`, in its order. */
export const DESTINATION_PHASES = ['store-flush', 'compose', 'lazy-pages', 'criu-restore'] as const;

/** Phases that are no part of the pause (everything else of a report is). */
export const OUTSIDE_PAUSE = ['connect', 'bundle', 'handshake', 'precopy', 'criu-freeze', 'criu-start', 'fill'] as const;

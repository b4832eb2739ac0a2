// Memory layer: dirty tracking (DirtyTracker, TreeTracker) and page reading.
export { DirtyTracker, type DirtySet, type StartInfo, type TrackerStats } from './dirty-tracker';
export { TreeTracker, childrenOf, type TreeScan } from './tree-tracker';
export { readPages, isZeroPage, type ReadPagesOptions, type ReadPagesResult } from './read-pages';
export { DirtyTrackingError, type TrackingFailure } from './errors';
export * from './ranges';

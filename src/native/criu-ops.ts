// What native/criu_ops.cc exports: libcriu's check, dump, restore and version,
// each run on a worker thread and returned as a promise. src/criu/libcriu.ts
// is the only caller; it validates the options before they get here.

/** Options every call takes (src/criu/libcriu.ts documents each field). */
export interface CriuOpsArgs {
  criuBinary: string;
  imagesDir?: string;
  workDir?: string;
  logFile?: string;
  logLevel?: number;
  timeoutMs?: number;
  [option: string]: unknown;
}

export interface CriuOpsNative {
  criuCheck(args: CriuOpsArgs): Promise<void>;
  criuDump(args: CriuOpsArgs): Promise<void>;
  /** Resolves with the restored root's pid. */
  criuRestore(args: CriuOpsArgs): Promise<number>;
  /** Resolves with major*10000 + minor*100 + sublevel. */
  criuVersion(args: CriuOpsArgs): Promise<number>;
}

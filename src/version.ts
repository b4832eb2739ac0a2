// The engine's version, from package.json, so there is one source of truth.
// eslint-disable-next-line @typescript-eslint/no-var-requires
export const VERSION: string = require('../../package.json').version;

// Types for msgpackr's build without eval-generated readers and without its
// optional native extension (frames.ts says why it is the one we load): the
// same Packr and Unpackr as the package's main entry.
declare module 'msgpackr/index-no-eval' {
  export { Packr, Unpackr } from 'msgpackr';
}

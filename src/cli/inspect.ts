// `erofs-lazy inspect REF`: the manifest, each layer's media type, size and annotations, and for
// seekable layers a summary of the chunk table, fetched by Range (never the whole blob). Names and options
// only; inspectcmd.ts is imported when the command runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';

export function registerInspect(y: Argv): Argv {
  return y.command(
    'inspect <reference>',
    'show an image\'s manifest, layers and chunk tables without downloading layers',
    (c) =>
      withImageAccess(c)
        .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
    async (args) => (await import('./inspectcmd.js')).runInspect(args),
  );
}

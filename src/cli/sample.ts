// `erofs-lazy sample DST`: pushes the embedded sample image (an ordinary tar+gzip OCI image: busybox,
// a 48 MiB data file, an upper layer with a whiteout and an opaque directory) for demos and tests.
// Names and options only; samplecmd.ts is imported when the command runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';

export function registerSample(y: Argv): Argv {
  return y.command(
    'sample <destination>',
    'push the embedded sample image (tar+gzip layers) to a registry reference or oci:DIR[:TAG]',
    (c) => withImageAccess(c).positional('destination', { type: 'string', demandOption: true }),
    async (args) => (await import('./samplecmd.js')).runSample(args),
  );
}

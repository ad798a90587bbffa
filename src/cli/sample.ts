// `erofs-lazy sample DST`: pushes the embedded sample image (an ordinary tar+gzip OCI image: busybox,
// a 48 MiB data file, an upper layer with a whiteout and an opaque directory) for demos and tests.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Argv } from 'yargs';
import { openImageStore } from '../fetch/index.js';
import { buildImageFromDirs, writeSampleLayers } from '../sample/build.js';
import { imageStoreOptions, withImageAccess } from './common.js';

export function registerSample(y: Argv): Argv {
  return y.command(
    'sample <destination>',
    'push the embedded sample image (tar+gzip layers) to a registry reference or oci:DIR[:TAG]',
    (c) => withImageAccess(c).positional('destination', { type: 'string', demandOption: true }),
    async (args) => {
      const store = openImageStore(args.destination, imageStoreOptions(args));
      const work = await mkdtemp(join(tmpdir(), 'erofs-lazy-sample-'));
      try {
        const dirs = await writeSampleLayers(work);
        const desc = await buildImageFromDirs(store, dirs, { cmd: ['/bin/cat', '/etc/motd'] });
        process.stdout.write(`${store.displayName}@${desc.digest}\n`);
      } finally {
        await rm(work, { recursive: true, force: true });
        await store.close();
      }
    },
  );
}

// What `erofs-lazy sample` does (its options are in sample.ts): builds the sample image's layers in a
// temporary directory, pushes the image and prints its reference with digest.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openImageStore } from '../fetch/index.js';
import { buildImageFromDirs, writeSampleLayers } from '../sample/build.js';
import type { ImageAccessArgs } from './common.js';
import { imageStoreOptions } from './imageargs.js';

export async function runSample(args: ImageAccessArgs & { destination: string }): Promise<void> {
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
}

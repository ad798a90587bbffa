// What `erofs-lazy profile push` and `profile show` do (their options are in profile.ts).
import { readFile } from 'node:fs/promises';
import { openImageStore } from '../fetch/index.js';
import { findProfile, pushProfile } from '../prefetch/artifact.js';
import { parseProfile } from '../prefetch/profile.js';
import type { ImageAccessArgs } from './common.js';
import { imageStoreOptions, platformOption } from './imageargs.js';
import { printJson } from './output.js';

export async function runProfilePush(args: ImageAccessArgs & { reference: string; file: string }): Promise<void> {
  const bytes = await readFile(args.file);
  const profile = parseProfile(bytes, args.file);
  const store = openImageStore(args.reference, imageStoreOptions(args));
  try {
    const image = await store.resolve({ platform: platformOption(args.platform) });
    const imageLayers = new Set(image.manifest.layers.map((l) => l.digest));
    const unknown = profile.layers.filter((d) => !imageLayers.has(d));
    if (unknown.length === profile.layers.length && unknown.length > 0) {
      throw new Error(`${args.file} was recorded on other layers than ${args.reference} has (first: ${unknown[0]})`);
    }
    const artifact = await pushProfile(store, image.descriptor, bytes);
    process.stdout.write(`pushed profile of ${profile.chunks.length} chunks for ${image.descriptor.digest} as ${artifact.digest}\n`);
  } finally {
    await store.close();
  }
}

export async function runProfileShow(args: ImageAccessArgs & { reference: string }): Promise<void> {
  const store = openImageStore(args.reference, imageStoreOptions(args));
  try {
    const image = await store.resolve({ platform: platformOption(args.platform) });
    const profile = await findProfile(store, image.descriptor);
    if (!profile) throw new Error(`no prefetch profile is stored with ${args.reference} (${image.descriptor.digest})`);
    printJson(profile);
  } finally {
    await store.close();
  }
}

// What `erofs-lazy profile push`, `profile show` and `profile paths` do (their options are in profile.ts).
import { readFile, rename, writeFile } from 'node:fs/promises';
import { openImageStore } from '../fetch/index.js';
import { findProfile, pushProfile } from '../prefetch/artifact.js';
import { hotPathsOfProfile, LayerByteOwners } from '../prefetch/hotpaths.js';
import { parseProfile } from '../prefetch/profile.js';
import { BrowseSession } from './browseimage.js';
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

export async function runProfilePaths(args: ImageAccessArgs & { reference: string; file: string; output?: string; 'cache-dir'?: string }): Promise<void> {
  const profile = parseProfile(await readFile(args.file), args.file);
  if (profile.ranges.length === 0) {
    throw new Error(`${args.file} has no block ranges (it was recorded before erofs-lazy recorded them, or nothing was read): record it again with \`mount --record\``);
  }
  const session = await BrowseSession.open(args.reference, args, { readahead: false, cacheDir: args['cache-dir'] });
  try {
    const byDigest = new Map(session.descriptors.map((d, i) => [d.digest, i]));
    const unknown = profile.layers.filter((d) => !byDigest.has(d));
    if (unknown.length === profile.layers.length) {
      throw new Error(`${args.file} was recorded on other layers than ${args.reference} has (first: ${unknown[0]})`);
    }
    const used = new Set(profile.ranges.map(([layer]) => layer));
    const owners = await Promise.all(
      profile.layers.map(async (digest, i) => {
        const index = byDigest.get(digest);
        return index === undefined || !used.has(i) ? undefined : LayerByteOwners.build(await session.layerImage(index));
      }),
    );
    const paths = hotPathsOfProfile(profile, owners);
    const text = paths.map((p) => `${p}\n`).join('');
    if (args.output === undefined) {
      process.stdout.write(text);
    } else {
      const temp = `${args.output}.tmp-${process.pid}`;
      await writeFile(temp, text);
      await rename(temp, args.output);
    }
    const stats = session.stats();
    process.stderr.write(`${paths.length} paths from ${profile.ranges.length} ranges; fetched ${stats.bytesFetched} bytes (${(stats.fractionFetched * 100).toFixed(1)}% of the image) to map them\n`);
  } finally {
    await session.close();
  }
}

// `erofs-lazy profile push REF FILE` stores a recorded prefetch profile (from `mount --record FILE`) with the
// image, as a referrer artifact that `mount --prefetch auto` finds; `erofs-lazy profile show REF` prints the
// profile stored with an image.
import { readFile } from 'node:fs/promises';
import type { Argv } from 'yargs';
import { openImageStore } from '../fetch/index.js';
import { findProfile, pushProfile } from '../prefetch/artifact.js';
import { parseProfile } from '../prefetch/profile.js';
import { imageStoreOptions, platformOption, withImageAccess } from './common.js';
import { printJson } from './output.js';

export function registerProfile(y: Argv): Argv {
  return y.command('profile', 'store or show a prefetch profile recorded with `mount --record`', (p) =>
    p
      .command(
        'push <reference> <file>',
        'store a recorded profile with the image (an OCI referrer artifact)',
        (c) =>
          withImageAccess(c)
            .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' })
            .positional('file', { type: 'string', demandOption: true, describe: 'profile written by `mount --record`' }),
        async (args) => {
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
        },
      )
      .command(
        'show <reference>',
        'print the profile stored with an image',
        (c) => withImageAccess(c).positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' }),
        async (args) => {
          const store = openImageStore(args.reference, imageStoreOptions(args));
          try {
            const image = await store.resolve({ platform: platformOption(args.platform) });
            const profile = await findProfile(store, image.descriptor);
            if (!profile) throw new Error(`no prefetch profile is stored with ${args.reference} (${image.descriptor.digest})`);
            printJson(profile);
          } finally {
            await store.close();
          }
        },
      )
      .demandCommand(1, 'name a profile command: push or show'),
  );
}

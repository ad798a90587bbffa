// `erofs-lazy convert SRC DST`: rewrites an image so that every layer is seekable EROFS.
import type { Argv } from 'yargs';
import { convertImage } from '../convert/image.js';
import type { ConvertProgress } from '../convert/image.js';
import { DEFAULT_CHUNK_SIZE } from '../chunktable/index.js';
import { DEFAULT_VERITY_BLOCK_SIZE } from '../verity/dmverity.js';
import { openImageStore } from '../fetch/index.js';
import { imageStoreOptions, platformOption, withImageAccess } from './common.js';
import { formatBytes, printJson, ProgressLine, shortDigest } from './output.js';

const PHASE_TEXT: Record<ConvertProgress['phase'], string> = {
  'fetch-and-build': 'fetching and building EROFS',
  encode: 'compressing into seekable frames',
  push: 'pushing',
  keep: 'already seekable, copying',
  done: 'done',
};

export function registerConvert(y: Argv): Argv {
  return y.command(
    'convert <source> <destination>',
    'convert an image (registry reference or oci:DIR[:TAG]) so that every layer is seekable EROFS',
    (c) =>
      withImageAccess(c)
        .positional('source', { type: 'string', demandOption: true, describe: 'image to read' })
        .positional('destination', { type: 'string', demandOption: true, describe: 'where to write the new image' })
        .option('chunk-size', { type: 'number', default: DEFAULT_CHUNK_SIZE, describe: 'uncompressed bytes per zstd frame' })
        .option('dm-verity', { type: 'boolean', default: false, describe: 'append a dm-verity hash tree (sha512) to each layer' })
        .option('dm-verity-block-size', { type: 'number', default: DEFAULT_VERITY_BLOCK_SIZE, describe: 'dm-verity block size' })
        .option('work-dir', { type: 'string', describe: 'scratch directory (default: the system temp dir)' })
        .option('json', { type: 'boolean', default: false, describe: 'print the new manifest digest and layer sizes as JSON' }),
    async (args) => {
      const platform = platformOption(args.platform);
      const source = openImageStore(args.source, imageStoreOptions(args));
      const destination = openImageStore(args.destination, imageStoreOptions(args));
      const progress = new ProgressLine();
      try {
        const result = await convertImage(source, destination, {
          chunkSize: args['chunk-size'],
          dmVerity: args['dm-verity'],
          dmVerityBlockSize: args['dm-verity-block-size'],
          platform,
          workDir: args['work-dir'],
          onProgress: (e) =>
            progress.update(`layer ${e.layerIndex + 1}/${e.layerCount} ${shortDigest(e.sourceDigest)}: ${PHASE_TEXT[e.phase]}`),
        });
        progress.done();
        if (args.json) {
          printJson({
            manifestDigest: result.manifestDigest,
            manifestSize: result.manifestSize,
            configDigest: result.configDigest,
            layers: result.layers,
          });
        } else {
          process.stdout.write(`${destination.displayName}@${result.manifestDigest}\n`);
          for (const l of result.layers) {
            const raw = l.uncompressedSize === undefined ? '' : `, EROFS ${formatBytes(l.uncompressedSize)} in ${l.chunkCount} chunks`;
            process.stdout.write(`  ${shortDigest(l.sourceDigest)} -> ${shortDigest(l.digest)} ${l.action} (${formatBytes(l.size)}${raw})\n`);
          }
        }
      } finally {
        progress.done();
        await Promise.all([source.close(), destination.close()]);
      }
    },
  );
}

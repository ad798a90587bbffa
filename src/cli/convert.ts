// `erofs-lazy convert SRC DST`: rewrites an image so that every layer is seekable EROFS. Names and options
// only; convertcmd.ts is imported when the command runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';
import { DEFAULT_CHUNK_SIZE, DEFAULT_VERITY_BLOCK_SIZE } from './defaults.js';

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
        .option('hot-paths', {
          type: 'string',
          describe:
            'file listing paths a workload reads first, one per line (from `profile paths`): build layers with erofs-lazy\'s EROFS writer and lay these out together at the front',
        })
        .option('json', { type: 'boolean', default: false, describe: 'print the new manifest digest and layer sizes as JSON' }),
    async (args) => (await import('./convertcmd.js')).runConvert(args),
  );
}

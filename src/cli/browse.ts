// `erofs-lazy ls`, `cat` and `stat`: look inside an image without mounting it (no root, FUSE or kernel
// erofs needed). The layers are read through the user-space EROFS reader (src/erofs) over lazy chunk sources,
// so a listing fetches only the chunks holding the metadata it touches; `--stats` prints what was fetched.
// The merged view follows overlay semantics (whiteouts and opaque directories applied); `--layer` shows one
// layer as it is. Only seekable EROFS layers are read: any other layer the command needs is refused with a
// one-line error (these commands never download a whole layer). Names and options only; browsecmd.ts is
// imported when one of them runs.
import type { Argv } from 'yargs';
import type { BrowseArgs } from './browsecmd.js';
import { withImageAccess } from './common.js';

function withBrowseOptions<T>(y: Argv<T>): Argv<T & { layer?: string; stats: boolean; 'cache-dir'?: string }> {
  return withImageAccess(y)
    .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' })
    .option('layer', { type: 'string', describe: 'show one layer as it is (whiteouts included): its index (0 = bottom, -1 = top) or digest' })
    .option('stats', { type: 'boolean', default: false, describe: 'print the blob bytes and requests fetched on stderr' })
    .option('cache-dir', { type: 'string', describe: 'also use (and fill) the on-disk chunk cache of this cache dir (as mount --cache-dir)' }) as unknown as Argv<
    T & { layer?: string; stats: boolean; 'cache-dir'?: string }
  >;
}

export function registerBrowse<T>(parser: Argv<T>): Argv<T> {
  return parser
    .command(
      'ls <reference> [path]',
      'list files of an image without mounting it (fetches only the metadata it needs)',
      (c) =>
        withBrowseOptions(c)
          .positional('path', { type: 'string', default: '/', describe: 'directory or file inside the image' })
          .option('long', { alias: 'l', type: 'boolean', default: false, describe: 'modes, links, owners, sizes, mtimes (UTC), link targets' })
          .option('recursive', { alias: 'R', type: 'boolean', default: false, describe: 'list the whole tree below PATH, one full path per line' })
          .option('json', { type: 'boolean', default: false, describe: 'print the entries as a JSON array' }),
      async (args) => (await import('./browsecmd.js')).runLs(args as unknown as BrowseArgs & { path: string; long: boolean; recursive: boolean; json: boolean }),
    )
    .command(
      'cat <reference> <path>',
      "write a file's bytes to stdout (symlinks followed)",
      (c) => withBrowseOptions(c).positional('path', { type: 'string', demandOption: true, describe: 'file inside the image' }),
      async (args) => (await import('./browsecmd.js')).runCat(args as unknown as BrowseArgs & { path: string }),
    )
    .command(
      'stat <reference> <path>',
      'inode details of a path, and which chunks of which layer hold it',
      (c) =>
        withBrowseOptions(c)
          .positional('path', { type: 'string', demandOption: true, describe: 'path inside the image' })
          .option('dereference', { alias: 'L', type: 'boolean', default: false, describe: 'follow a symlink in the last component' })
          .option('json', { type: 'boolean', default: false, describe: 'print a JSON report' }),
      async (args) => (await import('./browsecmd.js')).runStat(args as unknown as BrowseArgs & { path: string; json: boolean; dereference: boolean }),
    ) as Argv<T>;
}

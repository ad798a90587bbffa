// `erofs-lazy rpull REF --address CONTAINERD_SOCKET`: makes an image known to containerd (content,
// snapshots, image record) without downloading its seekable layers: the snapshotter (erofs-lazy serve)
// mounts them lazily as remote snapshots, so that `ctr run --snapshotter erofs-lazy REF` starts at once.
// Names and options only; rpullcmd.ts (gRPC, the registry client) is imported when the command runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';
import { DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER } from './defaults.js';

export function registerRpull<T>(parser: Argv<T>): Argv<T> {
  return parser.command(
    'rpull <reference>',
    'make an image known to containerd with lazily mounted (remote) snapshots instead of downloading it',
    (c) =>
      withImageAccess(c)
        .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference (the image name in containerd)' })
        .option('address', { type: 'string', demandOption: true, describe: "containerd's gRPC socket" })
        .option('namespace', { type: 'string', default: DEFAULT_NAMESPACE, describe: 'containerd namespace' })
        .option('snapshotter', { type: 'string', default: DEFAULT_SNAPSHOTTER, describe: 'containerd snapshotter to unpack into' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report instead of lines' }),
    async (args) => (await import('./rpullcmd.js')).runRpull(args),
  ) as unknown as Argv<T>;
}

// `erofs-lazy serve`: the containerd remote snapshotter (containerd's snapshots API over gRPC on a unix
// socket, plugged in as `[proxy_plugins.erofs-lazy]`), serving seekable EROFS layers lazily and every other
// layer the way containerd's overlayfs snapshotter does. Also the hidden `serve-fuse-manager`, the detached
// process serve starts to keep the layers' FUSE mounts alive across a serve crash. Names and options only;
// servecmd.ts (gRPC, the snapshotter) and fusemanagercmd.ts are imported when their command runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';
import {
  DEFAULT_CACHE_DIR,
  DEFAULT_DISK_CACHE_MAX_BYTES,
  DEFAULT_MEMORY_CACHE_BYTES,
  DEFAULT_MOUNT_TIMEOUT_MS,
  DEFAULT_READ_DEADLINE_MS,
  DEFAULT_SNAPSHOTTER_ROOT,
  FUSE_MANAGER_COMMAND,
} from './defaults.js';

export function registerServe<T>(parser: Argv<T>): Argv<T> {
  return parser
    .command(
      'serve',
      'run the containerd remote snapshotter (proxy plugin "erofs-lazy") on a unix socket',
      (c) =>
        withImageAccess(c)
          .option('address', { type: 'string', demandOption: true, describe: "unix socket to serve containerd's snapshots API on" })
          .option('root', { type: 'string', default: DEFAULT_SNAPSHOTTER_ROOT, describe: 'snapshot metadata and directories' })
          .option('cache-dir', { type: 'string', default: DEFAULT_CACHE_DIR, describe: 'chunk cache shared with `erofs-lazy mount`' })
          .option('cache-max-bytes', { type: 'number', default: DEFAULT_DISK_CACHE_MAX_BYTES, describe: 'bound of the on-disk chunk cache' })
          .option('memory-cache-bytes', { type: 'number', default: DEFAULT_MEMORY_CACHE_BYTES, describe: 'bound of the in-memory chunk cache' })
          .option('read-timeout', { type: 'number', default: DEFAULT_READ_DEADLINE_MS / 1000, describe: 'seconds a read may take, retries included, before it fails with EIO' })
          .option('mount-timeout', { type: 'number', default: DEFAULT_MOUNT_TIMEOUT_MS / 1000, describe: 'seconds the registry may take to answer while a layer is set up' })
          .option('fuse-manager', {
            type: 'boolean',
            default: true,
            describe: 'serve the layers from a detached FUSE manager that outlives a serve crash (--no-fuse-manager: from this process)',
          })
          .option('metrics-address', { type: 'string', describe: 'HOST:PORT to serve Prometheus metrics on (/metrics)' })
          .option('prefetch', { type: 'boolean', default: true, describe: 'prefetch each remote layer from the profile stored with its image (--no-prefetch: off)' })
          .option('multi-range', { type: 'boolean', default: false, describe: 'fetch distant runs of missing chunks in one multi-range request' })
          .option('prefetch-path', {
            type: 'string',
            array: true,
            describe: 'prefetch what reading this path needs in every remote layer holding it (file or directory tree); repeatable',
          }),
      async (args) => (await import('./servecmd.js')).runServe(args),
    )
    .command(
      FUSE_MANAGER_COMMAND,
      false,
      (c) =>
        c
          .option('root', { type: 'string', demandOption: true })
          .option('foreground', { type: 'boolean', default: true })
          .option('ready-fd', { type: 'number' }),
      async (args) => (await import('./fusemanagercmd.js')).runFuseManagerCommand(args),
    ) as Argv<T>;
}

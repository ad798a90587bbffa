// `erofs-lazy mount REF MOUNTPOINT`, `erofs-lazy umount MOUNTPOINT|--all` and `erofs-lazy stats MOUNTPOINT`:
// their names, options and descriptions. The work is in mountcmd.ts (and mountserve.ts for the serving
// process), imported when one of these commands runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';
import {
  DEFAULT_BACKGROUND_BYTES_PER_SECOND,
  DEFAULT_CACHE_DIR,
  DEFAULT_DISK_CACHE_MAX_BYTES,
  DEFAULT_MAX_GAP_BYTES,
  DEFAULT_MEMORY_CACHE_BYTES,
  DEFAULT_MOUNT_TIMEOUT_MS,
  DEFAULT_READ_DEADLINE_MS,
  DEFAULT_STATE_DIR,
} from './defaults.js';

const MiB = 1024 * 1024;

function withStateDir<T>(y: Argv<T>): Argv<T & { 'state-dir': string }> {
  return y.option('state-dir', {
    type: 'string',
    default: DEFAULT_STATE_DIR,
    describe: 'where mount records live',
  }) as Argv<T & { 'state-dir': string }>;
}

export function registerMount(y: Argv): Argv {
  return y
    .command(
      'mount <reference> <mountpoint>',
      'mount an image lazily: only the chunks that are read are fetched',
      (c) =>
        withStateDir(withImageAccess(c))
          .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' })
          .positional('mountpoint', { type: 'string', demandOption: true })
          .option('foreground', { type: 'boolean', default: false, describe: 'keep serving in this process until SIGINT/SIGTERM' })
          .option('rw', { type: 'boolean', default: false, describe: 'add a writable upper layer in a temp dir, discarded at unmount' })
          .option('cache-dir', { type: 'string', default: DEFAULT_CACHE_DIR, describe: 'on-disk cache of chunks and whole layers' })
          .option('cache-max-bytes', { type: 'number', default: DEFAULT_DISK_CACHE_MAX_BYTES, describe: 'bound of the on-disk chunk cache' })
          .option('memory-cache-bytes', { type: 'number', default: DEFAULT_MEMORY_CACHE_BYTES, describe: 'bound of the in-memory chunk cache' })
          .option('read-timeout', { type: 'number', default: DEFAULT_READ_DEADLINE_MS / 1000, describe: 'seconds a read may take, retries included, before it fails with EIO' })
          .option('mount-timeout', { type: 'number', default: DEFAULT_MOUNT_TIMEOUT_MS / 1000, describe: 'seconds the registry may take to answer while mounting' })
          .option('multi-range', { type: 'boolean', default: false, describe: 'fetch distant runs of missing chunks in one multi-range request (single ranges again if the registry refuses)' })
          .option('max-gap-bytes', { type: 'number', default: DEFAULT_MAX_GAP_BYTES, describe: 'fetch missing chunks at most this many blob bytes apart in one range (gap bytes are fetched and dropped)' })
          .option('record', { type: 'string', describe: 'when unmounted, write the chunks reads asked for (first-read order) to this profile file' })
          .option('record-exact', {
            type: 'boolean',
            default: false,
            describe: "with --record: turn the kernel's read-ahead on the layer files off, so the profile's block ranges are only what the filesystem read (for `profile paths`)",
          })
          .option('prefetch', {
            type: 'string',
            default: 'auto',
            describe: 'prefetch from a recorded profile: "auto" (one stored with the image, if any), "none", or a profile file',
          })
          .option('prefetch-path', {
            type: 'string',
            array: true,
            describe: 'after mounting, fetch what reading this path of the image needs (a file, or a directory tree); repeatable',
          })
          .option('background-fetch', { type: 'boolean', default: false, describe: 'once reads are quiet, fetch the rest of the layers in the background (paused by reads)' })
          .option('background-rate', { type: 'number', default: DEFAULT_BACKGROUND_BYTES_PER_SECOND / MiB, describe: 'MiB/s of background fetching' })
          .option('ready-fd', { type: 'number', hidden: true }),
      async (args) => (await import('./mountcmd.js')).runMount(args),
    )
    .command(
      'umount [mountpoint]',
      'unmount what `mount` made (overlay, erofs, loop devices, FUSE, process, temp dirs)',
      (c) =>
        withStateDir(c)
          .positional('mountpoint', { type: 'string' })
          .option('all', { type: 'boolean', default: false, describe: 'unmount every erofs-lazy mount, also of killed processes' })
          .check((a) => (a.all || a.mountpoint ? true : 'name a mount point or --all')),
      async (args) => (await import('./mountcmd.js')).runUmount(args),
    )
    .command(
      'stats <mountpoint>',
      'show what a mount fetched from the registry and served from its caches',
      (c) =>
        withStateDir(c)
          .positional('mountpoint', { type: 'string', demandOption: true })
          .option('json', { type: 'boolean', default: false }),
      async (args) => (await import('./mountcmd.js')).runStats(args),
    );
}

// `erofs-lazy profile push REF FILE` stores a recorded prefetch profile (from `mount --record FILE`) with the
// image, as a referrer artifact that `mount --prefetch auto` finds; `erofs-lazy profile show REF` prints the
// profile stored with an image; `erofs-lazy profile paths REF FILE` lists the paths whose bytes a recorded
// profile read (input of `convert --hot-paths`). Names and options only; profilecmd.ts is imported when one of
// them runs.
import type { Argv } from 'yargs';
import { withImageAccess } from './common.js';

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
        async (args) => (await import('./profilecmd.js')).runProfilePush(args),
      )
      .command(
        'show <reference>',
        'print the profile stored with an image',
        (c) => withImageAccess(c).positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' }),
        async (args) => (await import('./profilecmd.js')).runProfileShow(args),
      )
      .command(
        'paths <reference> <file>',
        'list the paths (files, directories, symlinks) whose bytes a recorded profile read, in first-read order: the input of `convert --hot-paths`',
        (c) =>
          withImageAccess(c)
            .positional('reference', { type: 'string', demandOption: true, describe: 'the image the profile was recorded on (registry reference or oci:DIR[:TAG])' })
            .positional('file', { type: 'string', demandOption: true, describe: 'profile written by `mount --record`' })
            .option('output', { alias: 'o', type: 'string', describe: 'write the list to this file instead of standard output' })
            .option('cache-dir', { type: 'string', describe: 'use (and fill) the on-disk chunk cache of this cache dir (the recording mount\'s --cache-dir saves refetching)' }),
        async (args) => (await import('./profilecmd.js')).runProfilePaths(args),
      )
      .demandCommand(1, 'name a profile command: push, show or paths'),
  );
}

// `erofs-lazy profile push REF FILE` stores a recorded prefetch profile (from `mount --record FILE`) with the
// image, as a referrer artifact that `mount --prefetch auto` finds; `erofs-lazy profile show REF` prints the
// profile stored with an image. Names and options only; profilecmd.ts is imported when one of them runs.
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
      .demandCommand(1, 'name a profile command: push or show'),
  );
}

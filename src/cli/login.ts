// `erofs-lazy login [--username U] [--password-stdin] HOST` and `erofs-lazy logout HOST`: names and options
// (logincmd.ts, which talks to the registry and edits the docker config, is imported when one of them runs).
import type { Argv } from 'yargs';
import { DOCKER_HUB_REGISTRY } from './defaults.js';

/** Registry logged in to when no host is given (as docker does). */
export const DEFAULT_LOGIN_HOST = DOCKER_HUB_REGISTRY;

export function registerLogin(y: Argv): Argv {
  return y
    .command(
      'login [host]',
      'check registry credentials and store them in the docker config',
      (c) =>
        c
          .positional('host', { type: 'string', describe: `registry host (default ${DEFAULT_LOGIN_HOST})` })
          .option('username', { alias: 'u', type: 'string', describe: 'username' })
          .option('password', { alias: 'p', type: 'string', describe: 'password (insecure: visible in ps; use --password-stdin)' })
          .option('password-stdin', { type: 'boolean', default: false, describe: 'read the password from stdin' })
          .option('plain-http', { type: 'boolean', default: false, describe: 'use HTTP instead of HTTPS (loopback hosts use HTTP anyway)' }),
      async (args) => (await import('./logincmd.js')).runLogin(args),
    )
    .command(
      'logout [host]',
      'remove stored registry credentials from the docker config',
      (c) => c.positional('host', { type: 'string', describe: `registry host (default ${DEFAULT_LOGIN_HOST})` }),
      async (args) => (await import('./logincmd.js')).runLogout(args),
    );
}

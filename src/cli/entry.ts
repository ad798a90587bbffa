// What bin/erofs-lazy.js runs. Normally the command line (main.ts, yargs). In the background process that
// `erofs-lazy mount` starts, the parent has already parsed and checked the options and passes them in
// MOUNT_OPTIONS_ENV: that process goes straight to serving the mount (mountserve.ts) without loading the
// command-line parser and the command definitions, which shortens the time until the mount is ready.
// A background `mount` starts that process before parsing its own command line (src/mount/daemon.ts, early
// start), so the child's module loading overlaps the parent's parsing; the child then receives the options
// through a pipe instead of its environment.
import { cancelEarly, EARLY_START_ENV, startEarly } from '../mount/daemon.js';
import { reportFailure } from './output.js';

/** Environment variable carrying a background mount's prepared options (JSON) from `mount` to its serving process. */
export const MOUNT_OPTIONS_ENV = 'EROFS_LAZY_MOUNT_OPTIONS';
/** The command whose background process reads MOUNT_OPTIONS_ENV. */
const MOUNT_COMMAND = 'mount';
/** Arguments after which `mount` starts no background process (or yargs answers by itself). */
const NO_BACKGROUND_FLAGS = new Set(['--foreground', '--help', '-h', '--version']);

/** Runs the CLI with these arguments (process.argv without node and the script); resolves to the exit code. */
export async function run(argv: string[]): Promise<number> {
  const prepared = process.env[MOUNT_OPTIONS_ENV];
  const earlyChild = process.env[EARLY_START_ENV] !== undefined;
  // Never inherited further (by the mount's helper commands or anything started from the mount).
  delete process.env[MOUNT_OPTIONS_ENV];
  delete process.env[EARLY_START_ENV];
  if (argv[0] === MOUNT_COMMAND && (prepared !== undefined || earlyChild)) {
    try {
      const serve = await import('./mountserve.js');
      if (prepared !== undefined) await serve.serveMountFromParent(prepared);
      else await serve.serveEarlyStartedMount();
      return 0;
    } catch (err) {
      return reportFailure(err);
    }
  }
  if (argv[0] === MOUNT_COMMAND && process.argv[1] !== undefined && !argv.some((a) => NO_BACKGROUND_FLAGS.has(a))) {
    startEarly(process.argv[1], argv);
  }
  try {
    const { main } = await import('./main.js');
    return await main(argv);
  } finally {
    cancelEarly();
  }
}

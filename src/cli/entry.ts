// What bin/erofs-lazy.js runs. Normally the command line (main.ts, yargs). In the background process that
// `erofs-lazy mount` starts, the parent has already parsed and checked the options and passes them in
// MOUNT_OPTIONS_ENV: that process goes straight to serving the mount (mountserve.ts) without loading the
// command-line parser and the command definitions, which shortens the time until the mount is ready.
import { reportFailure } from './output.js';

/** Environment variable carrying a background mount's prepared options (JSON) from `mount` to its serving process. */
export const MOUNT_OPTIONS_ENV = 'EROFS_LAZY_MOUNT_OPTIONS';
/** The command whose background process reads MOUNT_OPTIONS_ENV. */
const MOUNT_COMMAND = 'mount';

/** Runs the CLI with these arguments (process.argv without node and the script); resolves to the exit code. */
export async function run(argv: string[]): Promise<number> {
  const prepared = process.env[MOUNT_OPTIONS_ENV];
  // Never inherited further (by the mount's helper commands or anything started from the mount).
  delete process.env[MOUNT_OPTIONS_ENV];
  if (prepared !== undefined && argv[0] === MOUNT_COMMAND) {
    try {
      const { serveMountFromParent } = await import('./mountserve.js');
      await serveMountFromParent(prepared);
      return 0;
    } catch (err) {
      return reportFailure(err);
    }
  }
  const { main } = await import('./main.js');
  return main(argv);
}

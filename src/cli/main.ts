// Command-line entry: parses arguments with yargs and dispatches to the commands in src/cli/.
// Every failure ends as one line on stderr and a non-zero exit code (EROFS_LAZY_DEBUG=1 adds the stack).
// Start-up cost: the command modules imported here only define names, options and descriptions (with the
// defaults from defaults.ts); each handler imports the module that does the work (a *cmd.ts file) when it
// runs, so a command loads only what it uses (gRPC for serve and rpull, the registry client for the
// commands that open images, the mount server for mount). test/unit/cli-startup.test.ts checks this.
import yargs from 'yargs';
import type { Argv } from 'yargs';
import { registerBench } from './bench.js';
import { registerBrowse } from './browse.js';
import { registerConvert } from './convert.js';
import { registerInspect } from './inspect.js';
import { registerLogin } from './login.js';
import { registerMount } from './mount.js';
import { registerProfile } from './profile.js';
import { registerRpull } from './rpull.js';
import { registerSample } from './sample.js';
import { registerServe } from './serve.js';
import { EXIT_USAGE, reportFailure } from './output.js';

export { EXIT_FAILURE, EXIT_USAGE } from './output.js';

function buildParser(argv: string[]): Argv {
  let parser: Argv = yargs(argv)
    .scriptName('erofs-lazy')
    .usage('$0 <command> [options]\n\nLazy-loading container images in the seekable EROFS format.')
    .strict()
    .demandCommand(1, 'name a command; see --help')
    .recommendCommands()
    .wrap(Math.min(110, process.stdout.columns || 110))
    .help()
    .version()
    .exitProcess(false);
  parser = registerConvert(parser);
  parser = registerInspect(parser);
  parser = registerMount(parser);
  parser = registerSample(parser);
  parser = registerBench(parser);
  parser = registerLogin(parser);
  parser = registerServe(parser);
  parser = registerRpull(parser);
  parser = registerBrowse(parser);
  parser = registerProfile(parser);
  return parser;
}

class UsageError extends Error {}

export async function main(argv: string[]): Promise<number> {
  const parser = buildParser(argv).fail((msg, err) => {
    throw err ?? new UsageError(msg);
  });
  try {
    await parser.parseAsync();
    return process.exitCode === undefined ? 0 : Number(process.exitCode);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`erofs-lazy: ${err.message}\n`);
      return EXIT_USAGE;
    }
    return reportFailure(err);
  }
}

// Command-line entry: parses arguments with yargs and dispatches to the commands in src/cli/.
// Every failure ends as one line on stderr and a non-zero exit code (EROFS_LAZY_DEBUG=1 adds the stack).
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
import { oneLineError } from './output.js';

export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

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
    process.stderr.write(`erofs-lazy: ${oneLineError(err)}\n`);
    if (process.env.EROFS_LAZY_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
    return EXIT_FAILURE;
  }
}

// Command-line entry: parses arguments with yargs and dispatches to the commands in src/cli/.
import yargs from 'yargs';

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  await yargs(argv)
    .scriptName('erofs-lazy')
    .usage('$0 <command> [options]\n\nLazy-loading seekable EROFS container images.')
    .strict()
    .demandCommand(1, 'name a command; see --help')
    .help()
    .fail((msg, err) => {
      throw err ?? new Error(msg);
    })
    .parseAsync();
  return exitCode;
}

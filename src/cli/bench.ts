// `erofs-lazy bench`: read-path throughput of a lazy mount against a local loop mount of the same image
// (see src/bench/mountbench.ts); scripts/bench runs it and keeps the JSON under docs/bench/.
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { DEFAULT_BENCH_FILE_MIB, DEFAULT_BENCH_RUNS, runMountBench } from '../bench/mountbench.js';
import { printJson } from './output.js';

const QUICK_FILE_MIB = 64;
const QUICK_RUNS = 1;

export function registerBench(y: Argv): Argv {
  return y.command(
    'bench',
    'measure lazy-mount read throughput and fetched bytes against a local loop mount (root, local registry)',
    (c) =>
      c
        .option('file-mib', { type: 'number', default: DEFAULT_BENCH_FILE_MIB, describe: 'size of the large file read sequentially' })
        .option('runs', { type: 'number', default: DEFAULT_BENCH_RUNS, describe: 'runs per mode (medians are reported)' })
        .option('chunk-size', { type: 'number', describe: 'chunk size used when converting (default: the format default)' })
        .option('quick', { type: 'boolean', default: false, describe: `smoke run: ${QUICK_FILE_MIB} MiB, ${QUICK_RUNS} run` })
        .option('out', { type: 'string', describe: 'write the JSON result to this file' }),
    async (args) => {
      const cliPath = process.argv[1]!;
      const result = await runMountBench({
        fileMiB: args.quick ? QUICK_FILE_MIB : args['file-mib'],
        runs: args.quick ? QUICK_RUNS : args.runs,
        chunkSize: args['chunk-size'],
        cliPath,
        repoRoot: resolve(cliPath, '../..'),
        outPath: args.out ? resolve(args.out) : undefined,
        log: (line) => process.stderr.write(`bench: ${line}\n`),
      });
      printJson(result);
    },
  );
}

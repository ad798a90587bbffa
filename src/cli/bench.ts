// `erofs-lazy bench`: the cold-start benchmark (src/bench/coldstart.ts): realistic images in a local
// registry, every mode from a cold start on a loopback and an emulated link; scripts/bench runs it and
// keeps the JSON, Markdown and SVG files under docs/bench/.
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import {
  DEFAULT_BENCH_RUNS,
  DEFAULT_BENCH_WORK_DIR,
  DEFAULT_BIG_FILE_MIB,
  EMULATED_LINK,
  LOOPBACK_LINK,
  parseModes,
  QUICK_BIG_FILE_MIB,
  QUICK_SCENARIOS,
  rerenderReport,
  runColdStartBench,
} from '../bench/coldstart.js';
import type { LinkProfile } from '../bench/types.js';
import { printJson } from './output.js';

const QUICK_RUNS = 1;

function list(value: string | undefined): string[] | undefined {
  return value ? value.split(',').map((x) => x.trim()).filter(Boolean) : undefined;
}

export function registerBench(y: Argv): Argv {
  return y.command(
    'bench',
    'cold-start benchmark: full pull vs lazy mount (cold, warm, prefetch) vs containerd, on loopback and an emulated link (root)',
    (c) =>
      c
        .option('quick', { type: 'boolean', default: false, describe: `smoke run: ${QUICK_SCENARIOS.join(', ')} with a ${QUICK_BIG_FILE_MIB} MiB file, ${QUICK_RUNS} run, loopback only` })
        .option('runs', { type: 'number', default: DEFAULT_BENCH_RUNS, describe: 'runs per mode (medians are reported)' })
        .option('file-mib', { type: 'number', default: DEFAULT_BIG_FILE_MIB, describe: 'size of the large-file image' })
        .option('chunk-size', { type: 'number', describe: 'chunk size used when converting (default: the format default)' })
        .option('scenarios', { type: 'string', describe: 'comma-separated scenarios (default: all)' })
        .option('modes', { type: 'string', describe: 'comma-separated modes (default: all)' })
        .option('links', { type: 'string', describe: 'comma-separated links: loopback, emulated (default: both)' })
        .option('rtt-ms', { type: 'number', default: EMULATED_LINK.rttMs, describe: 'delay per request on the emulated link' })
        .option('mbit', { type: 'number', default: EMULATED_LINK.mbitPerSecond ?? 0, describe: 'bandwidth of the emulated link in Mbit/s (0: unlimited)' })
        .option('work-dir', { type: 'string', default: DEFAULT_BENCH_WORK_DIR, describe: 'cache of built trees, images, registry storage, raw images' })
        .option('out-dir', { type: 'string', describe: 'write JSON, Markdown report and SVG charts here' })
        .option('out-name', { type: 'string', describe: 'file name stem of the outputs (default coldstart-DATE)' })
        .option('render', { type: 'string', describe: 'only render the report (Markdown, SVG) of this result JSON into its directory' }),
    async (args) => {
      if (args.render) {
        for (const f of await rerenderReport(resolve(args.render))) process.stderr.write(`bench: wrote ${f}\n`);
        return;
      }
      const cliPath = process.argv[1]!;
      const emulated: LinkProfile = { ...EMULATED_LINK, rttMs: args['rtt-ms'], mbitPerSecond: args.mbit > 0 ? args.mbit : null };
      const known = [LOOPBACK_LINK, emulated];
      const linkNames = args.quick ? [LOOPBACK_LINK.name] : (list(args.links) ?? known.map((l) => l.name));
      const links = linkNames.map((n) => {
        const l = known.find((k) => k.name === n);
        if (!l) throw new Error(`unknown link ${n}; known: ${known.map((k) => k.name).join(', ')}`);
        return l;
      });
      const { result, files } = await runColdStartBench({
        work: resolve(args['work-dir']),
        runs: args.quick ? QUICK_RUNS : args.runs,
        quick: args.quick,
        bigFileMiB: args.quick ? QUICK_BIG_FILE_MIB : args['file-mib'],
        chunkSize: args['chunk-size'],
        links,
        scenarios: list(args.scenarios) ?? (args.quick ? QUICK_SCENARIOS : undefined),
        modes: parseModes(args.modes),
        cliPath,
        repoRoot: resolve(cliPath, '../..'),
        outDir: args['out-dir'] ? resolve(args['out-dir']) : undefined,
        outName: args['out-name'],
        command: `erofs-lazy ${process.argv.slice(2).join(' ')}`,
        log: (line) => process.stderr.write(`bench: ${line}\n`),
      });
      for (const f of files) process.stderr.write(`bench: wrote ${f}\n`);
      if (files.length === 0) printJson(result);
    },
  );
}

// `erofs-lazy bench`: the cold-start benchmark (src/bench/coldstart.ts): realistic images in a local
// registry, every mode from a cold start on a loopback and an emulated link; scripts/bench runs it and
// keeps the JSON, Markdown and SVG files under docs/bench/. The options' defaults live in the benchmark
// module, which the builder imports when this command is selected (never on other commands' start-up);
// benchcmd.ts runs it.
import type { Argv } from 'yargs';

/** Runs per mode of a --quick run. */
export const QUICK_RUNS = 1;

export function registerBench(y: Argv): Argv {
  return y.command(
    'bench',
    'cold-start benchmark: full pull vs lazy mount (cold, warm, prefetch) vs containerd, on loopback and an emulated link (root)',
    async (c) => {
      const b = await import('../bench/coldstart.js');
      return c
        .option('quick', { type: 'boolean', default: false, describe: `smoke run: ${b.QUICK_SCENARIOS.join(', ')} with a ${b.QUICK_BIG_FILE_MIB} MiB file, ${QUICK_RUNS} run, loopback only` })
        .option('runs', { type: 'number', default: b.DEFAULT_BENCH_RUNS, describe: 'runs per mode (medians are reported)' })
        .option('file-mib', { type: 'number', default: b.DEFAULT_BIG_FILE_MIB, describe: 'size of the large-file image' })
        .option('chunk-size', { type: 'number', describe: 'chunk size used when converting (default: the format default)' })
        .option('layout', {
          choices: ['mkfs', 'startup'] as const,
          default: 'mkfs' as const,
          describe: "seekable images laid out by mkfs.erofs, or 'startup': each command workload recorded, then the image converted again with the paths it read first (convert --hot-paths)",
        })
        .option('scenarios', { type: 'string', describe: 'comma-separated scenarios (default: all)' })
        .option('modes', { type: 'string', describe: 'comma-separated modes (default: all)' })
        .option('links', { type: 'string', describe: 'comma-separated links: loopback, emulated (default: both)' })
        .option('rtt-ms', { type: 'number', default: b.EMULATED_LINK.rttMs, describe: 'delay per request on the emulated link' })
        .option('mbit', { type: 'number', default: b.EMULATED_LINK.mbitPerSecond ?? 0, describe: 'bandwidth of the emulated link in Mbit/s (0: unlimited)' })
        .option('work-dir', { type: 'string', default: b.DEFAULT_BENCH_WORK_DIR, describe: 'cache of built trees, images, registry storage, raw images' })
        .option('out-dir', { type: 'string', describe: 'write JSON, Markdown report and SVG charts here' })
        .option('out-name', { type: 'string', describe: 'file name stem of the outputs (default coldstart-DATE)' })
        .option('render', { type: 'string', describe: 'only render the report (Markdown, SVG) of this result JSON into its directory' })
        .option('prefetch-path', { type: 'string', array: true, describe: 'paths for the lazy-paths mode (mount --prefetch-path); repeatable' });
    },
    async (args) => (await import('./benchcmd.js')).runBench(args),
  );
}

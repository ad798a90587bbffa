// What `erofs-lazy bench` does (its options are in bench.ts): runs the cold-start benchmark over the chosen
// links, scenarios and modes and writes its reports (or prints the JSON result), or only re-renders a report.
import { resolve } from 'node:path';
import { EMULATED_LINK, LOOPBACK_LINK, parseModes, QUICK_BIG_FILE_MIB, QUICK_SCENARIOS, rerenderReport, runColdStartBench } from '../bench/coldstart.js';
import type { LinkProfile } from '../bench/types.js';
import { QUICK_RUNS } from './bench.js';
import { printJson } from './output.js';

export interface BenchArgs {
  quick: boolean;
  runs: number;
  'file-mib': number;
  'chunk-size'?: number;
  layout: 'mkfs' | 'startup';
  scenarios?: string;
  modes?: string;
  links?: string;
  'rtt-ms': number;
  mbit: number;
  'work-dir': string;
  'out-dir'?: string;
  'out-name'?: string;
  render?: string;
  'prefetch-path'?: string[];
}

function list(value: string | undefined): string[] | undefined {
  return value ? value.split(',').map((x) => x.trim()).filter(Boolean) : undefined;
}

export async function runBench(args: BenchArgs): Promise<void> {
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
    layout: args.layout,
    links,
    scenarios: list(args.scenarios) ?? (args.quick ? QUICK_SCENARIOS : undefined),
    modes: parseModes(args.modes),
    prefetchPaths: args['prefetch-path'],
    cliPath,
    repoRoot: resolve(cliPath, '../..'),
    outDir: args['out-dir'] ? resolve(args['out-dir']) : undefined,
    outName: args['out-name'],
    command: `erofs-lazy ${process.argv.slice(2).join(' ')}`,
    log: (line) => process.stderr.write(`bench: ${line}\n`),
  });
  for (const f of files) process.stderr.write(`bench: wrote ${f}\n`);
  if (files.length === 0) printJson(result);
}

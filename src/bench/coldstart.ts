// `erofs-lazy bench`: the cold-start benchmark. Starts the local registry (storage cached under the work
// dir), builds or reuses the benchmark images, puts a throttling proxy in front of the registry for each
// emulated link, records a read profile per workload when `mount --record` exists, then measures every
// scenario (image + workload) on every link in every mode, `runs` times, modes interleaved within a run,
// and writes the JSON, the Markdown report and its SVG charts.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { BIG_FILE_IN_IMAGE, bigFileRecipe, debianPythonRecipe, ensureImage, NODE_APP_REQUIRES, nodeAppRecipe } from './images.js';
import type { BenchLayout, BuiltImage, ImageRecipe } from './images.js';
import { cli, endRun, recordHotPaths, recordProfile, runMode, skipReason } from './modes.js';
import { parseHotPaths } from '../convert/hotpaths.js';
import type { BenchEnv, BenchFeatures, ContainerdEnv, RunState, RunTarget } from './modes.js';
import { startThrottleProxy } from './proxy.js';
import type { ThrottleProxy } from './proxy.js';
import { renderReport } from './report.js';
import { describeMachine, loadAverage, releaseMountsBelow } from './system.js';
import { MODE_LABELS, MODE_NAMES, summarizeModes } from './types.js';
import type { ColdStartResult, ImageSummary, LinkProfile, ModeName, ModeSummary, ScenarioResult } from './types.js';
import type { Workload } from './workloads.js';

const run = promisify(execFile);

export const DEFAULT_BENCH_WORK_DIR = '/var/tmp/erofs-lazy-bench';
export const DEFAULT_BENCH_RUNS = 3;
export const DEFAULT_BIG_FILE_MIB = 1024;
export const QUICK_BIG_FILE_MIB = 64;
export const LOOPBACK_LINK: LinkProfile = { name: 'loopback', rttMs: 0, mbitPerSecond: null, viaProxy: false };
/** The emulated registry link: 20 ms per request, 200 Mbit/s shared. */
export const EMULATED_LINK: LinkProfile = { name: 'emulated', rttMs: 20, mbitPerSecond: 200, viaProxy: true };
export const RANDOM_4K_READS = 256;
export const RANDOM_128K_READS = 256;
const RANDOM_SEED = 0x5eed;
const CONTAINERD_NAMESPACE = 'erofs-lazy-bench';
const CONTAINERD_PLUGIN = 'erofs-lazy';

export interface Scenario {
  name: string;
  recipe: ImageRecipe;
  workload: Workload;
  /** Links this scenario runs on (default: all). */
  links?: string[];
}

export function benchScenarios(bigFileMiB: number): Scenario[] {
  const big = bigFileRecipe(bigFileMiB);
  const requires = NODE_APP_REQUIRES.map((m) => `require(${JSON.stringify(m)})`).join(';');
  return [
    {
      name: 'debian-python',
      recipe: debianPythonRecipe(),
      workload: { kind: 'exec', name: 'python-import', description: `python3 -c 'import json, sqlite3; print("ok")'`, argv: ['python3', '-c', 'import json, sqlite3; print("ok")'], expect: 'ok' },
    },
    {
      name: 'node-app',
      recipe: nodeAppRecipe(),
      workload: {
        kind: 'exec',
        name: 'node-require',
        description: `cd /app && node -e 'require(...)' of ${NODE_APP_REQUIRES.join(', ')}`,
        argv: ['sh', '-c', `cd /app && exec node -e '${requires};console.log("ok")'`],
        expect: 'ok',
      },
    },
    {
      name: 'bigfile-seq',
      recipe: big,
      workload: { kind: 'read-seq', name: 'sequential', description: `dd of the whole ${bigFileMiB} MiB file, 1 MiB reads`, path: BIG_FILE_IN_IMAGE },
      links: [LOOPBACK_LINK.name],
    },
    {
      name: 'bigfile-rand4k',
      recipe: big,
      workload: { kind: 'read-random', name: 'random-4k', description: `${RANDOM_4K_READS} reads of 4 KiB at random offsets`, path: BIG_FILE_IN_IMAGE, blockBytes: 4096, count: RANDOM_4K_READS, seed: RANDOM_SEED },
      links: [LOOPBACK_LINK.name],
    },
    {
      name: 'bigfile-rand128k',
      recipe: big,
      workload: { kind: 'read-random', name: 'random-128k', description: `${RANDOM_128K_READS} reads of 128 KiB at random offsets`, path: BIG_FILE_IN_IMAGE, blockBytes: 128 * 1024, count: RANDOM_128K_READS, seed: RANDOM_SEED },
      links: [LOOPBACK_LINK.name],
    },
  ];
}

/** Scenarios of a --quick smoke run. */
export const QUICK_SCENARIOS = ['debian-python', 'bigfile-seq', 'bigfile-rand4k'];

export interface ColdStartOptions {
  work: string;
  runs: number;
  quick: boolean;
  bigFileMiB: number;
  chunkSize?: number;
  /**
   * Layout of the seekable images: 'mkfs' (mkfs.erofs's), or 'startup': each scenario with a command workload
   * is recorded on the mkfs image, and the image converted again with the paths it read laid out first.
   */
  layout?: BenchLayout;
  links: LinkProfile[];
  /** Scenario names to run (default: all). */
  scenarios?: string[];
  modes: ModeName[];
  /** Extra scenarios (tests use a small one). */
  extraScenarios?: Scenario[];
  /** Paths for the lazy-paths mode (prefetch by path); that mode is skipped without them. */
  prefetchPaths?: string[];
  cliPath: string;
  repoRoot: string;
  /** Directory for the JSON, Markdown and SVG files; none to only return the result. */
  outDir?: string;
  /** File name stem of the outputs. */
  outName?: string;
  command: string;
  log: (line: string) => void;
}

export interface ColdStartOutput {
  result: ColdStartResult;
  files: string[];
}

async function detectFeatures(env: Pick<BenchEnv, 'cliPath' | 'log'>, notes: string[]): Promise<BenchFeatures> {
  const help = async (cmd: string) => {
    try {
      const r = await run(process.execPath, [env.cliPath, cmd, '--help'], { maxBuffer: 1 << 20 });
      return r.stdout + r.stderr;
    } catch (err) {
      return (err as { stdout?: string }).stdout ?? '';
    }
  };
  const mountHelp = await help('mount');
  const features: BenchFeatures = { record: mountHelp.includes('--record'), prefetch: mountHelp.includes('--prefetch') };
  if (!features.record || !features.prefetch) notes.push('lazy-prefetch skipped: `erofs-lazy mount --help` does not list --record and --prefetch.');
  return features;
}

async function startContainerd(options: ColdStartOptions, scratch: string, notes: string[]): Promise<ContainerdEnv | undefined> {
  const script = join(options.repoRoot, 'scripts/containerd');
  const missing: string[] = [];
  if (!existsSync(script)) missing.push('scripts/containerd');
  for (const bin of ['/usr/bin/containerd', '/usr/bin/ctr', '/usr/sbin/runc']) if (!existsSync(bin)) missing.push(bin);
  const serveHelp = await run(process.execPath, [options.cliPath, 'serve', '--help']).then((r) => r.stdout, () => '');
  if (!serveHelp.includes('--address')) missing.push('`erofs-lazy serve --address`');
  const rpullHelp = await run(process.execPath, [options.cliPath, 'rpull', '--help']).then((r) => r.stdout, () => '');
  if (!rpullHelp.includes('--address')) missing.push('`erofs-lazy rpull --address`');
  if (missing.length > 0) {
    notes.push(`containerd modes skipped: missing ${missing.join(', ')}.`);
    return undefined;
  }
  const dir = join(scratch, 'containerd');
  try {
    const address = (await run(script, ['start', '--dir', dir, '--plugin-name', CONTAINERD_PLUGIN])).stdout.trim();
    return { dir, address, snapshotterSocket: join(dir, 'erofs-lazy.sock'), namespace: CONTAINERD_NAMESPACE, plugin: CONTAINERD_PLUGIN };
  } catch (err) {
    notes.push(`containerd modes skipped: scripts/containerd start failed: ${(err as Error).message.split('\n')[0]}`);
    return undefined;
  }
}

function imageSummary(img: BuiltImage): ImageSummary {
  return {
    name: img.name,
    description: img.description,
    layers: img.plainLayers.length,
    treeBytes: img.treeBytes,
    plainBytes: img.plainBytes,
    seekableBytes: img.seekableBytes,
    rawBytes: img.rawBytes,
    chunkSize: img.chunkSize,
    layout: img.layout ?? 'mkfs',
    ...(img.hotPaths === undefined ? {} : { hotPaths: img.hotPaths }),
  };
}

function fmtRun(mode: ModeName, m: { readyMs: number; doneMs: number; bytesFetched: number | null; throughputMBps?: number }): string {
  const mb = m.bytesFetched === null ? '?' : (m.bytesFetched / 1e6).toFixed(1);
  const tp = m.throughputMBps === undefined ? '' : `, ${m.throughputMBps.toFixed(0)} MB/s`;
  return `${mode}: ready ${(m.readyMs / 1000).toFixed(2)} s, done ${(m.doneMs / 1000).toFixed(2)} s, ${mb} MB fetched${tp}`;
}

export async function runColdStartBench(options: ColdStartOptions): Promise<ColdStartOutput> {
  const { log } = options;
  const startedAt = Date.now();
  const loadStart = loadAverage();
  const notes: string[] = [];
  await mkdir(options.work, { recursive: true });
  const scratch = join(options.work, `run-${process.pid}`);
  await rm(scratch, { recursive: true, force: true });
  await mkdir(scratch, { recursive: true });
  const registryDir = join(options.work, 'registry');
  const registryScript = join(options.repoRoot, 'scripts/registry');
  const env: BenchEnv = { cliPath: options.cliPath, scratch, stateDir: join(scratch, 'state'), features: { record: false, prefetch: false }, log };
  const proxies: ThrottleProxy[] = [];
  // SIGINT/SIGTERM stop the bench after the mode in progress, through the cleanup below.
  let interrupted: string | undefined;
  const onSignal = (signal: string) => {
    interrupted = signal;
    log(`${signal}: stopping after the current mode`);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const registry = (await run(registryScript, ['start', '--dir', registryDir, '--port', '0'])).stdout.trim();
    log(`registry at ${registry} (storage ${registryDir})`);
    env.features = await detectFeatures(env, notes);
    if (options.prefetchPaths?.length) env.features.prefetchPaths = options.prefetchPaths;
    const all = [...benchScenarios(options.bigFileMiB), ...(options.extraScenarios ?? [])];
    const wanted = options.scenarios ?? all.map((s) => s.name);
    const scenarios = wanted.map((name) => {
      const s = all.find((x) => x.name === name);
      if (!s) throw new Error(`unknown scenario ${name}; known: ${all.map((x) => x.name).join(', ')}`);
      return s;
    });
    if (options.modes.some((m) => m.startsWith('containerd-')) && scenarios.some((s) => s.workload.kind === 'exec')) {
      env.features.containerd = await startContainerd(options, scratch, notes);
    }

    const images = new Map<string, BuiltImage>();
    for (const s of scenarios) {
      if (!images.has(s.recipe.name)) {
        images.set(s.recipe.name, await ensureImage({ work: options.work, registry, chunkSize: options.chunkSize, log }, s.recipe));
      }
    }
    if (options.layout === 'startup') {
      for (const s of scenarios) {
        const image = images.get(s.recipe.name)!;
        if (s.workload.kind !== 'exec' || image.layout === 'startup') continue;
        const hotPathsFile = join(options.work, 'images', `${s.recipe.name}-${image.chunkSize === 'default' ? 'cdefault' : `c${image.chunkSize}`}.hot-paths`);
        if (!existsSync(hotPathsFile)) {
          log(`${s.name}: recording the paths the workload reads, for a start-up layout`);
          await recordHotPaths(env, { image, workload: s.workload, link: LOOPBACK_LINK, host: registry }, hotPathsFile);
        }
        const hotPaths = parseHotPaths(await readFile(hotPathsFile, 'utf8'), hotPathsFile);
        images.set(s.recipe.name, await ensureImage({ work: options.work, registry, chunkSize: options.chunkSize, hotPaths, log }, s.recipe));
      }
    }

    const hosts = new Map<string, { host: string; proxy?: ThrottleProxy }>();
    for (const link of options.links) {
      if (!link.viaProxy) {
        hosts.set(link.name, { host: registry });
        continue;
      }
      const proxy = await startThrottleProxy({
        upstream: registry,
        latencyMs: link.rttMs,
        bytesPerSecond: link.mbitPerSecond === null ? undefined : (link.mbitPerSecond * 1e6) / 8,
      });
      proxies.push(proxy);
      hosts.set(link.name, { host: proxy.host, proxy });
      log(`link ${link.name}: proxy at ${proxy.host} (${link.rttMs} ms per request, ${link.mbitPerSecond ?? 'unlimited'} Mbit/s)`);
    }

    const profiles = new Map<string, string>();
    if (env.features.record && env.features.prefetch && options.modes.includes('lazy-prefetch')) {
      await mkdir(join(scratch, 'profiles'), { recursive: true });
      for (const s of scenarios) {
        const path = join(scratch, 'profiles', `${s.name}.profile`);
        const target: RunTarget = { image: images.get(s.recipe.name)!, workload: s.workload, link: LOOPBACK_LINK, host: registry };
        try {
          await recordProfile(env, target, path);
          profiles.set(s.name, path);
          log(`${s.name}: recorded a profile`);
        } catch (err) {
          notes.push(`${s.name}: recording a profile failed: ${(err as Error).message}`);
        }
      }
    }

    const results: ScenarioResult[] = [];
    for (const s of scenarios) {
      const dropped = options.links.filter((l) => s.links && !s.links.includes(l.name)).map((l) => l.name);
      if (dropped.length > 0) {
        notes.push(`${s.name} runs on ${s.links!.join(', ')} only, not on ${dropped.join(', ')}: there a full pull and a cold read of the file are both bounded by the link's bandwidth, and the targets for it are on loopback and local disk.`);
      }
      for (const link of options.links) {
        if (s.links && !s.links.includes(link.name)) continue;
        const { host, proxy } = hosts.get(link.name)!;
        const target: RunTarget = { image: images.get(s.recipe.name)!, workload: s.workload, link, host, proxy, profilePath: profiles.get(s.name) };
        const summaries: ModeSummary[] = options.modes.map((mode) => {
          let skipped = skipReason(mode, target, env.features);
          if (!skipped && mode === 'lazy-warm' && !options.modes.includes('lazy-cold')) skipped = 'needs the lazy-cold mode (its cache)';
          return { mode, label: MODE_LABELS[mode], ...(skipped ? { skipped } : {}), runs: [] };
        });
        const id = `${s.name} on ${link.name}`;
        const scenarioLoad = loadAverage();
        for (let r = 0; r < options.runs; r++) {
          const state: RunState = { containerCount: 0 };
          try {
            for (const summary of summaries) {
              if (summary.skipped) continue;
              if (interrupted) throw new Error(`interrupted by ${interrupted}`);
              try {
                const m = await runMode(env, summary.mode, target, state);
                summary.runs.push(m);
                log(`${id} run ${r + 1}/${options.runs} ${fmtRun(summary.mode, m)}`);
              } catch (err) {
                const msg = (err as Error).message;
                (summary.failures ??= []).push(msg);
                log(`${id} run ${r + 1} ${summary.mode} FAILED: ${msg}`);
                await cli(env, ['umount', '--all', '--state-dir', env.stateDir]).catch(() => undefined);
              }
            }
          } finally {
            await endRun(state);
          }
        }
        for (const summary of summaries) {
          if (summary.runs.length === 0 && summary.failures?.length) summary.skipped = `failed: ${summary.failures[0]}`;
        }
        summarizeModes(summaries);
        results.push({ id, image: s.recipe.name, workload: s.workload.name, workloadDescription: s.workload.description, link: link.name, loadAverage: scenarioLoad, modes: summaries });
      }
    }

    const result: ColdStartResult = {
      kind: 'erofs-lazy-coldstart-bench',
      version: 1,
      date: new Date(startedAt).toISOString(),
      command: options.command,
      quick: options.quick,
      machine: describeMachine(options.work),
      loadAverage: { start: loadStart, end: loadAverage() },
      durationSeconds: Math.round((Date.now() - startedAt) / 1000),
      settings: { runs: options.runs, links: options.links, modes: options.modes, workDir: options.work, programsWarm: true },
      images: [...images.values()].map(imageSummary),
      scenarios: results,
      notes,
    };
    const files = options.outDir ? await writeReport(result, options.outDir, options.outName) : [];
    return { result, files };
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await cli(env, ['umount', '--all', '--state-dir', env.stateDir]).catch((e: Error) => log(`cleanup: ${e.message}`));
    for (const p of proxies) await p.close();
    if (env.features.containerd) {
      await run(join(options.repoRoot, 'scripts/containerd'), ['stop', '--dir', env.features.containerd.dir]).catch((e: Error) => log(`cleanup: ${e.message}`));
    }
    await run(registryScript, ['stop', '--dir', registryDir]).catch((e: Error) => log(`cleanup: ${e.message}`));
    await releaseMountsBelow(scratch);
    await rm(scratch, { recursive: true, force: true }).catch((e: Error) => log(`cleanup: ${e.message}`));
  }
}

/** Writes STEM.json, the SVG charts and STEM.md into `outDir`; answers the paths. */
export async function writeReport(result: ColdStartResult, outDir: string, outName?: string, withJson = true): Promise<string[]> {
  await mkdir(outDir, { recursive: true });
  const stem = outName ?? `coldstart-${result.date.replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}`;
  const report = renderReport(result, stem);
  const files: string[] = [];
  if (withJson) {
    const jsonPath = join(outDir, `${stem}.json`);
    await writeFile(jsonPath, `${JSON.stringify(result, null, 2)}\n`);
    files.push(jsonPath);
  }
  for (const svg of report.svgs) {
    const p = join(outDir, svg.name);
    await writeFile(p, svg.content);
    files.push(p);
  }
  const mdPath = join(outDir, `${stem}.md`);
  await writeFile(mdPath, report.markdown);
  files.push(mdPath);
  return files;
}

/** Renders the report of a result JSON again (after a renderer change), beside it, with the same stem. */
export async function rerenderReport(jsonPath: string): Promise<string[]> {
  const result = JSON.parse(await readFile(jsonPath, 'utf8')) as ColdStartResult;
  if (result.kind !== 'erofs-lazy-coldstart-bench') throw new Error(`${jsonPath} is not a cold-start benchmark result`);
  return writeReport(result, dirname(jsonPath), basename(jsonPath, '.json'), false);
}

export function parseModes(list: string | undefined): ModeName[] {
  if (!list) return [...MODE_NAMES];
  const modes = list.split(',').map((m) => m.trim()).filter(Boolean);
  for (const m of modes) if (!(MODE_NAMES as readonly string[]).includes(m)) throw new Error(`unknown mode ${m}; known: ${MODE_NAMES.join(', ')}`);
  return modes as ModeName[];
}

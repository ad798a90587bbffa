// The modes of the cold-start benchmark, each measured from a cold start (page cache dropped, empty cache
// dirs, nothing of the image local except in `local` and `lazy-warm`): a full pull of the plain image
// (download, verify, untar, mount) or of the seekable image (download, decode, loop mount); the raw EROFS
// image on local disk; `erofs-lazy mount` cold, with a warm disk cache, and with prefetch from a
// recorded profile; and, through containerd, `ctr pull` + `ctr run` on overlayfs against
// `erofs-lazy serve` + `erofs-lazy rpull` + `ctr run`.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, openSync, closeSync, realpathSync } from 'node:fs';
import { mkdir, rm, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import { pathToFileURL } from 'node:url';
import { decodeLayerBlob } from '../chunktable/index.js';
import { openImageStore } from '../fetch/index.js';
import type { MountStats } from '../mount/stats.js';
import type { Descriptor } from '../oci/types.js';
import type { BuiltImage } from './images.js';
import type { ThrottleProxy } from './proxy.js';
import { dropCaches, mountRawImages, mountTrees, peakRssBytes, spawnCollect, unmountAll } from './system.js';
import type { LinkProfile, ModeName, RunMeasure } from './types.js';
import { runWorkload, WORKLOAD_PATH } from './workloads.js';
import type { Workload, WorkloadOutcome } from './workloads.js';

const execFileP = promisify(execFile);
const MIB = 1024 * 1024;
/** Layers downloaded at once by the full pull (containerd's default is 3). */
export const FULL_PULL_CONCURRENCY = 3;
const CLI_TIMEOUT_MS = 15 * 60_000;
const CTR_TIMEOUT_MS = 15 * 60_000;
/** containerd's gRPC client backs off after a snapshotter restart: wait this long after the socket appears. */
const SNAPSHOTTER_RECONNECT_MS = 4_000;
const SERVE_START_TIMEOUT_MS = 30_000;
const SERVE_STOP_TIMEOUT_MS = 20_000;
const POLL_MS = 100;

/** Optional features found at start (flags other helpers are adding). */
export interface BenchFeatures {
  /** `erofs-lazy mount --record FILE`. */
  record: boolean;
  /** `erofs-lazy mount --prefetch FILE|none`. */
  prefetch: boolean;
  /** Paths for the lazy-paths mode (`mount --prefetch-path`), from `bench --prefetch-path`. */
  prefetchPaths?: string[];
  /** A running containerd for the containerd modes, if any. */
  containerd?: ContainerdEnv;
}

export interface ContainerdEnv {
  /** Its config/state dir (scripts/containerd --dir). */
  dir: string;
  /** Its gRPC socket. */
  address: string;
  /** Where `erofs-lazy serve` must listen. */
  snapshotterSocket: string;
  namespace: string;
  /** The proxy plugin name of erofs-lazy's snapshotter. */
  plugin: string;
}

export interface BenchEnv {
  cliPath: string;
  /** Per-run scratch space (mount points, pulled trees, cache dirs). */
  scratch: string;
  stateDir: string;
  features: BenchFeatures;
  log: (line: string) => void;
}

/** One measured unit: an image, a workload, a link, and where the registry is reached. */
export interface RunTarget {
  image: BuiltImage;
  workload: Workload;
  link: LinkProfile;
  /** host:port used for the registry (the proxy's on an emulated link). */
  host: string;
  proxy?: ThrottleProxy;
  /** Profile recorded for this image and workload, when recording works. */
  profilePath?: string;
}

/** State kept between the modes of one run (the warm mode reuses the cold mode's cache). */
export interface RunState {
  lazyCacheDir?: string;
  containerCount: number;
}

export async function cli(env: BenchEnv, args: string[]): Promise<string> {
  try {
    return (await execFileP(process.execPath, [env.cliPath, ...args], { maxBuffer: 64 * MIB, timeout: CLI_TIMEOUT_MS })).stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`erofs-lazy ${args[0]} failed: ${(e.stderr || e.message).trim().split('\n').slice(-3).join(' | ')}`);
  }
}

function measure(
  t: RunTarget,
  readyMs: number,
  outcome: WorkloadOutcome,
  counts: { bytes: number | null; requests: number | null; from: RunMeasure['countsFrom'] },
  imageBytes: number,
  memory: { peak: number | null; cache: number | null } = { peak: null, cache: null },
): RunMeasure {
  const fromProxy = t.proxy?.counters();
  const bytes = fromProxy ? fromProxy.bytes : counts.bytes;
  const m: RunMeasure = {
    readyMs,
    workloadMs: outcome.ms,
    doneMs: readyMs + outcome.ms,
    bytesFetched: bytes,
    requests: fromProxy ? fromProxy.requests : counts.requests,
    fractionFetched: bytes === null ? null : bytes / imageBytes,
    countsFrom: fromProxy ? 'proxy' : counts.from,
    peakRssBytes: memory.peak,
    memoryCacheBytes: memory.cache,
  };
  if (outcome.bytesRead !== undefined) m.throughputMBps = outcome.bytesRead / 1e6 / (outcome.ms / 1000);
  return m;
}

/**
 * The modules a lazy mount's processes load (the command line, then the serving process), relative to the
 * CLI script: imported once after each cache drop, so the erofs-lazy program is in the page cache like the
 * bench process that runs the full pull.
 */
const PROGRAM_MODULES = ['../dist/src/cli/main.js', '../dist/src/cli/mountserve.js'];
const PROGRAM_WARM_TIMEOUT_MS = 60_000;

/** Drops the page cache, then reads the programs the modes start back into it (image data stays cold). */
function startCold(env: BenchEnv, t: RunTarget): number {
  dropCaches();
  const imports = PROGRAM_MODULES.map((m) => `await import(${JSON.stringify(new URL(m, pathToFileURL(realpathSync(env.cliPath))).href)});`).join('');
  execFileSync(process.execPath, ['--input-type=module', '-e', imports], { stdio: 'ignore', timeout: PROGRAM_WARM_TIMEOUT_MS });
  if (env.features.containerd) execFileSync('ctr', ['--version'], { stdio: 'ignore', timeout: PROGRAM_WARM_TIMEOUT_MS });
  t.proxy?.reset();
  return performance.now();
}

/** Streams `source` into `sink` while hashing and counting; checks the digest at the end. */
async function* verifiedBytes(source: Readable, desc: Descriptor, counter: { bytes: number }): AsyncGenerator<Uint8Array> {
  const hash = createHash('sha256');
  for await (const chunk of source as AsyncIterable<Buffer>) {
    hash.update(chunk);
    counter.bytes += chunk.length;
    yield chunk;
  }
  const got = `sha256:${hash.digest('hex')}`;
  if (got !== desc.digest) throw new Error(`layer ${desc.digest}: downloaded bytes hash to ${got}`);
}

async function untarInto(bytes: AsyncIterable<Uint8Array>, dir: string, desc: Descriptor): Promise<void> {
  await mkdir(dir, { recursive: true });
  const child = spawn('tar', ['--numeric-owner', '--xattrs', '--xattrs-include=*', '-xzf', '-', '-C', dir], { stdio: ['pipe', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number>((resolve) => child.on('close', (code) => resolve(code ?? 1)));
  try {
    for await (const chunk of bytes) {
      if (!child.stdin.write(chunk)) await new Promise<void>((r) => child.stdin.once('drain', () => r()));
    }
  } catch (err) {
    child.kill('SIGKILL');
    await exited;
    throw err;
  } finally {
    child.stdin.end();
  }
  const code = await exited;
  if (code !== 0) throw new Error(`layer ${desc.digest}: tar exited ${code}: ${stderr.trim().split('\n').slice(-2).join(' | ')}`);
}

/** Runs `work` over the items, `limit` at a time; after a failure starts no new item, waits for the running ones, throws the first error. */
async function inParallel<T>(items: T[], limit: number, work: (item: T, index: number) => Promise<void>): Promise<void> {
  let next = 0;
  let failure: { error: unknown } | undefined;
  const worker = async () => {
    while (next < items.length && !failure) {
      const i = next++;
      try {
        await work(items[i]!, i);
      } catch (error) {
        failure ??= { error };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  if (failure) throw failure.error;
}

/**
 * Full pull: resolve, fetch the config, then download every layer (FULL_PULL_CONCURRENCY at once),
 * verifying its digest while it streams into `tar -xz` (plain) or the seekable decoder (EROFS), then
 * mount the trees (overlayfs for several layers) or loop-mount the decoded images.
 */
async function fullPull(env: BenchEnv, t: RunTarget, variant: 'tar' | 'erofs'): Promise<RunMeasure> {
  const ref = `${t.host}/${variant === 'tar' ? t.image.plainRef : t.image.seekableRef}`;
  const dir = join(env.scratch, 'pull');
  const mnt = join(env.scratch, 'mnt');
  await rm(dir, { recursive: true, force: true });
  await mkdir(dir, { recursive: true });
  let undo: string[] = [];
  const counter = { bytes: 0 };
  let requests = 0;
  const started = startCold(env, t);
  const store = openImageStore(ref, { credentials: 'none' });
  try {
    const resolved = await store.resolve();
    await store.fetchBlob(resolved.manifest.config);
    requests += 2;
    const layers = resolved.manifest.layers;
    const outputs: string[] = layers.map((_, i) => join(dir, variant === 'tar' ? `layer-${i}` : `layer-${i}.erofs`));
    await inParallel(layers, FULL_PULL_CONCURRENCY, async (desc, i) => {
      requests++;
      const bytes = verifiedBytes(await store.openBlob(desc), desc, counter);
      if (variant === 'tar') await untarInto(bytes, outputs[i]!, desc);
      else await decodeLayerBlob(bytes, outputs[i]!, desc);
    });
    undo = variant === 'tar' ? await mountTrees(outputs, mnt) : await mountRawImages(outputs, dir, mnt);
    const readyMs = performance.now() - started;
    const outcome = await runWorkload(mnt, t.workload);
    const imageBytes = variant === 'tar' ? t.image.plainBytes : t.image.seekableBytes;
    return measure(t, readyMs, outcome, { bytes: counter.bytes, requests, from: 'client' }, imageBytes);
  } finally {
    await store.close();
    await unmountAll(undo).finally(() => rm(dir, { recursive: true, force: true }));
  }
}

/** The raw EROFS images already on local disk, loop-mounted: what a fully pre-pulled image costs. */
async function localMount(env: BenchEnv, t: RunTarget): Promise<RunMeasure> {
  const mnt = join(env.scratch, 'mnt');
  const dir = join(env.scratch, 'local');
  await mkdir(dir, { recursive: true });
  const started = startCold(env, t);
  const undo = await mountRawImages(t.image.rawPaths, dir, mnt);
  try {
    const readyMs = performance.now() - started;
    const outcome = await runWorkload(mnt, t.workload);
    return measure(t, readyMs, outcome, { bytes: 0, requests: 0, from: 'client' }, t.image.seekableBytes);
  } finally {
    await unmountAll(undo).finally(() => rm(dir, { recursive: true, force: true }));
  }
}

async function lazyMount(env: BenchEnv, t: RunTarget, cacheDir: string, extra: string[]): Promise<RunMeasure> {
  const mnt = join(env.scratch, 'mnt');
  const common = ['--state-dir', env.stateDir];
  const started = startCold(env, t);
  await cli(env, ['mount', `${t.host}/${t.image.seekableRef}`, mnt, ...common, '--cache-dir', cacheDir, ...extra]);
  try {
    const readyMs = performance.now() - started;
    const outcome = await runWorkload(mnt, t.workload);
    const stats = JSON.parse(await cli(env, ['stats', mnt, ...common, '--json'])) as MountStats;
    return measure(
      t,
      readyMs,
      outcome,
      { bytes: stats.total.bytesFetched, requests: stats.total.requests, from: 'mount-stats' },
      t.image.seekableBytes,
      { peak: peakRssBytes(stats.pid), cache: stats.memoryCache.maxBytes },
    );
  } finally {
    await cli(env, ['umount', mnt, ...common]);
  }
}

/** Mounts with `--record profilePath` (and `extra`), runs the workload, unmounts: the profile is written at unmount. */
async function recordWorkload(env: BenchEnv, t: RunTarget, profilePath: string, cacheDir: string, extra: string[]): Promise<void> {
  const mnt = join(env.scratch, 'mnt');
  await rm(profilePath, { force: true });
  await cli(env, ['mount', `${t.host}/${t.image.seekableRef}`, mnt, '--state-dir', env.stateDir, '--cache-dir', cacheDir, '--record', profilePath, ...extra]);
  try {
    await runWorkload(mnt, t.workload);
  } finally {
    await cli(env, ['umount', mnt, '--state-dir', env.stateDir]);
  }
  if (!existsSync(profilePath)) throw new Error(`mount --record ${profilePath} wrote no profile`);
}

/** Records the workload's prefetch profile from a cold start into `profilePath`. */
export async function recordProfile(env: BenchEnv, t: RunTarget, profilePath: string): Promise<void> {
  const cacheDir = join(env.scratch, 'record-cache');
  dropCaches();
  try {
    await recordWorkload(env, t, profilePath, cacheDir, []);
  } finally {
    await rm(cacheDir, { recursive: true, force: true });
  }
}

/**
 * The paths the workload reads, in first-read order: records it with `--record-exact`, then maps the recorded
 * block ranges to paths with `profile paths` (through the recording's disk cache), writing them to `outPath`.
 * Input of a start-up-ordered conversion (`convert --hot-paths`).
 */
export async function recordHotPaths(env: BenchEnv, t: RunTarget, outPath: string): Promise<void> {
  const profilePath = join(env.scratch, 'hot-record.profile');
  const cacheDir = join(env.scratch, 'hot-record-cache');
  try {
    await recordWorkload(env, t, profilePath, cacheDir, ['--record-exact', '--prefetch', 'none']);
    await cli(env, ['profile', 'paths', `${t.host}/${t.image.seekableRef}`, profilePath, '--cache-dir', cacheDir, '--output', outPath]);
  } finally {
    await rm(cacheDir, { recursive: true, force: true });
    await rm(profilePath, { force: true });
  }
}

function ctrArgs(c: ContainerdEnv, args: string[]): string[] {
  return ['--address', c.address, '-n', c.namespace, ...args];
}

async function ctr(c: ContainerdEnv, args: string[]): Promise<string> {
  const r = await spawnCollect('ctr', ctrArgs(c, args), CTR_TIMEOUT_MS);
  if (r.code !== 0) throw new Error(`ctr ${args.slice(0, 2).join(' ')} failed (exit ${r.code}): ${r.stderr.trim().split('\n').slice(-2).join(' | ')}`);
  return r.stdout;
}

/** Removes the image (and, by containerd's synchronous GC, its content and snapshots). */
async function ctrForget(c: ContainerdEnv, ref: string): Promise<void> {
  await spawnCollect('ctr', ctrArgs(c, ['images', 'rm', '--sync', ref]), CTR_TIMEOUT_MS);
}

async function ctrRunWorkload(c: ContainerdEnv, ref: string, w: Workload, id: string, snapshotter?: string): Promise<WorkloadOutcome> {
  if (w.kind !== 'exec') throw new Error(`workload ${w.name} cannot run in a container`);
  const started = performance.now();
  const out = await ctr(c, [
    'run', '--rm', '--fifo-dir', join(c.dir, 'fifo'), '--runc-root', join(c.dir, 'runc'),
    '--env', `PATH=${WORKLOAD_PATH}`,
    ...(snapshotter ? ['--snapshotter', snapshotter] : []),
    ref, id, ...w.argv,
  ]);
  const ms = performance.now() - started;
  if (!out.includes(w.expect)) throw new Error(`workload ${w.name} in container ${id} printed ${JSON.stringify(out.slice(-200))}`);
  return { ms };
}

async function containerdOverlay(env: BenchEnv, t: RunTarget, state: RunState): Promise<RunMeasure> {
  const c = env.features.containerd!;
  const ref = `${t.host}/${t.image.plainRef}`;
  await ctrForget(c, ref);
  const started = startCold(env, t);
  try {
    await ctr(c, ['images', 'pull', '--plain-http', ref]);
    const readyMs = performance.now() - started;
    const outcome = await ctrRunWorkload(c, ref, t.workload, `bench-${process.pid}-${state.containerCount++}`);
    return measure(t, readyMs, outcome, { bytes: t.image.plainBytes, requests: null, from: 'client' }, t.image.plainBytes);
  } finally {
    await ctrForget(c, ref);
  }
}

async function waitFor(what: string, timeoutMs: number, ok: () => boolean): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

async function containerdLazy(env: BenchEnv, t: RunTarget, state: RunState): Promise<RunMeasure> {
  const c = env.features.containerd!;
  const ref = `${t.host}/${t.image.seekableRef}`;
  const root = join(env.scratch, 'serve-root');
  const cacheDir = join(env.scratch, 'serve-cache');
  await ctrForget(c, ref);
  await rm(root, { recursive: true, force: true });
  await rm(cacheDir, { recursive: true, force: true });
  await rm(c.snapshotterSocket, { force: true });
  const logPath = join(env.scratch, 'serve.log');
  const logFd = openSync(logPath, 'a');
  const serve = spawn(process.execPath, [env.cliPath, 'serve', '--address', c.snapshotterSocket, '--root', root, '--cache-dir', cacheDir], {
    stdio: ['ignore', logFd, logFd],
  });
  closeSync(logFd);
  const exited = new Promise<void>((r) => serve.on('exit', () => r()));
  try {
    await waitFor('erofs-lazy serve socket', SERVE_START_TIMEOUT_MS, () => existsSync(c.snapshotterSocket) || serve.exitCode !== null);
    if (serve.exitCode !== null) throw new Error(`erofs-lazy serve exited ${serve.exitCode}: ${(await readFile(logPath, 'utf8')).trim().split('\n').slice(-2).join(' | ')}`);
    await new Promise((r) => setTimeout(r, SNAPSHOTTER_RECONNECT_MS));
    const started = startCold(env, t);
    let peak: number | null = null;
    try {
      await cli(env, ['rpull', ref, '--address', c.address, '--namespace', c.namespace, '--snapshotter', c.plugin]);
      const readyMs = performance.now() - started;
      const outcome = await ctrRunWorkload(c, ref, t.workload, `bench-${process.pid}-${state.containerCount++}`, c.plugin);
      peak = peakRssBytes(serve.pid!);
      return measure(t, readyMs, outcome, { bytes: null, requests: null, from: 'none' }, t.image.seekableBytes, { peak, cache: null });
    } finally {
      await ctrForget(c, ref);
    }
  } finally {
    serve.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, SERVE_STOP_TIMEOUT_MS))]);
    if (serve.exitCode === null && serve.signalCode === null) serve.kill('SIGKILL');
    await rm(cacheDir, { recursive: true, force: true });
  }
}

/** Why a mode cannot run for this target, or undefined when it can. */
export function skipReason(mode: ModeName, t: RunTarget, features: BenchFeatures): string | undefined {
  switch (mode) {
    case 'lazy-prefetch':
      if (!features.record || !features.prefetch) return '`erofs-lazy mount --help` does not list --record and --prefetch yet';
      if (!t.profilePath) return 'no profile was recorded for this workload';
      return undefined;
    case 'lazy-paths':
      if (!features.prefetchPaths?.length) return 'no --prefetch-path given to the bench';
      return undefined;
    case 'containerd-overlayfs':
    case 'containerd-lazy':
      if (!features.containerd) return 'containerd is not available (see the notes)';
      if (t.workload.kind !== 'exec') return 'read workloads run on a mounted tree, not in a container';
      return undefined;
    default:
      return undefined;
  }
}

/** Runs one mode once, from a cold start. */
export async function runMode(env: BenchEnv, mode: ModeName, t: RunTarget, state: RunState): Promise<RunMeasure> {
  switch (mode) {
    case 'full-pull':
      return fullPull(env, t, 'tar');
    case 'full-pull-erofs':
      return fullPull(env, t, 'erofs');
    case 'local':
      return localMount(env, t);
    case 'lazy-cold': {
      const cacheDir = join(env.scratch, `cache-${Date.now()}`);
      state.lazyCacheDir = cacheDir;
      // A plain `mount`: default options, so --prefetch auto (an image with a start-up layout prefetches its
      // start-up region; the bench stores no profile with its images).
      return lazyMount(env, t, cacheDir, []);
    }
    case 'lazy-warm': {
      if (!state.lazyCacheDir) throw new Error('lazy-warm needs the cache of a lazy-cold run first');
      return lazyMount(env, t, state.lazyCacheDir, []);
    }
    case 'lazy-prefetch': {
      const cacheDir = join(env.scratch, `cache-prefetch-${Date.now()}`);
      try {
        return await lazyMount(env, t, cacheDir, ['--prefetch', t.profilePath!]);
      } finally {
        await rm(cacheDir, { recursive: true, force: true });
      }
    }
    case 'lazy-paths': {
      const cacheDir = join(env.scratch, `cache-paths-${Date.now()}`);
      const paths = (env.features.prefetchPaths ?? []).flatMap((p) => ['--prefetch-path', p]);
      try {
        return await lazyMount(env, t, cacheDir, ['--prefetch', 'none', ...paths]);
      } finally {
        await rm(cacheDir, { recursive: true, force: true });
      }
    }
    case 'containerd-overlayfs':
      return containerdOverlay(env, t, state);
    case 'containerd-lazy':
      return containerdLazy(env, t, state);
  }
}

/** Removes what a run left in scratch (the warm cache). */
export async function endRun(state: RunState): Promise<void> {
  if (state.lazyCacheDir) await rm(state.lazyCacheDir, { recursive: true, force: true });
  state.lazyCacheDir = undefined;
}

// What `erofs-lazy mount`, `umount` and `stats` do (their options are in mount.ts). `mount` without
// --foreground only starts the serving process (mountserve.ts) in the background and waits for it to report
// the mount ready, so this module loads neither the mount server nor the registry client: the options are
// parsed and resolved here and handed to the serving process, which does not parse its command line again.
import { rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { notifyParent, READY_FD, startInBackground } from '../mount/daemon.js';
import type { MountStats } from '../mount/stats.js';
import { listMounts, mountDirFor, readState } from '../mount/state.js';
import type { ImageAccessArgs } from './common.js';
import { hostsDirOption, platformOption } from './imageargs.js';
import { preparedMountEnv, serveMount } from './mountserve.js';
import type { MountServeOptions } from './mountserve.js';
import { formatBytes, oneLineError, printJson, shortDigest } from './output.js';

const LOGS_SUBDIR = 'logs';
const MiB = 1024 * 1024;

interface StateDirArgs {
  'state-dir': string;
}

export interface MountArgs extends ImageAccessArgs, StateDirArgs {
  reference: string;
  mountpoint: string;
  foreground: boolean;
  rw: boolean;
  'cache-dir': string;
  'cache-max-bytes': number;
  'memory-cache-bytes': number;
  'read-timeout': number;
  'mount-timeout': number;
  'multi-range': boolean;
  'max-gap-bytes': number;
  record?: string;
  'record-exact': boolean;
  prefetch: string;
  'prefetch-path'?: string[];
  'background-fetch': boolean;
  'background-rate': number;
  'ready-fd'?: number;
}

function logPathFor(stateDir: string, mountpoint: string): string {
  return join(stateDir, LOGS_SUBDIR, `${mountDirFor(stateDir, mountpoint).split('/').pop()}.log`);
}

/** The mount server's options for these arguments (paths made absolute). */
function serveOptions(args: MountArgs, mountpoint: string, stateDir: string): MountServeOptions {
  return {
    reference: args.reference,
    mountpoint,
    platform: platformOption(args.platform),
    plainHttp: args['plain-http'],
    hostsDir: hostsDirOption(args['hosts-dir']),
    cacheDir: resolve(args['cache-dir']),
    cacheMaxBytes: args['cache-max-bytes'],
    memoryCacheBytes: args['memory-cache-bytes'],
    rw: args.rw,
    stateDir,
    readDeadlineMs: args['read-timeout'] * 1000,
    mountTimeoutMs: args['mount-timeout'] * 1000,
    multiRange: args['multi-range'],
    maxGapBytes: args['max-gap-bytes'],
    recordPath: args.record === undefined ? undefined : resolve(args.record),
    recordExact: args['record-exact'],
    prefetchPaths: args['prefetch-path'],
    backgroundBytesPerSecond: args['background-fetch'] ? args['background-rate'] * MiB : undefined,
    prefetch: args.prefetch === 'auto' || args.prefetch === 'none' ? args.prefetch : { file: resolve(args.prefetch) },
  };
}

export async function runMount(args: MountArgs): Promise<void> {
  const mountpoint = resolve(args.mountpoint);
  const stateDir = resolve(args['state-dir']);
  if (args.foreground) {
    const readyFd = args['ready-fd'];
    let options: MountServeOptions;
    try {
      options = serveOptions(args, mountpoint, stateDir);
    } catch (err) {
      if (readyFd !== undefined) await notifyParent(readyFd, { error: oneLineError(err) });
      throw err;
    }
    await serveMount(options, readyFd);
    return;
  }
  const options = serveOptions(args, mountpoint, stateDir);
  // The background process shows the same command line (with --foreground): `ps` tells what it serves, and
  // running that line by hand serves the same mount.
  const forwarded = process.argv.slice(2).filter((a) => a !== '--foreground');
  const logPath = logPathFor(stateDir, mountpoint);
  const pid = await startInBackground(process.argv[1]!, forwarded, logPath, { env: preparedMountEnv(options, READY_FD) });
  process.stdout.write(`mounted ${args.reference} at ${mountpoint} (pid ${pid}, log ${logPath})\n`);
}

export async function runUmount(args: StateDirArgs & { mountpoint?: string; all: boolean }): Promise<void> {
  const { teardownMount } = await import('../mount/teardown.js');
  const stateDir = resolve(args['state-dir']);
  if (args.all) {
    const failures: string[] = [];
    for (const { dir, state } of await listMounts(stateDir)) {
      try {
        if (state) await teardownMount(state);
        else await rm(dir, { recursive: true, force: true });
        if (state) process.stdout.write(`unmounted ${state.mountpoint}\n`);
      } catch (err) {
        failures.push(oneLineError(err));
      }
    }
    if (failures.length > 0) throw new Error(failures.join('; '));
    return;
  }
  const mountpoint = resolve(args.mountpoint!);
  const state = await readState(mountDirFor(stateDir, mountpoint));
  if (!state) throw new Error(`${mountpoint} is not an erofs-lazy mount`);
  await teardownMount(state);
}

export async function runStats(args: StateDirArgs & { mountpoint: string; json: boolean }): Promise<void> {
  const { fetchStats } = await import('../mount/stats.js');
  const mountpoint = resolve(args.mountpoint);
  const state = await readState(mountDirFor(resolve(args['state-dir']), mountpoint));
  if (!state) throw new Error(`${mountpoint} is not an erofs-lazy mount`);
  const stats = await fetchStats(state.statsSocket);
  if (args.json) printJson(stats);
  else printStats(stats);
}

function percent(x: number): string {
  return `${(x * 100).toFixed(2)}%`;
}

function printStats(s: MountStats): void {
  const rows: string[][] = [['layer', 'mode', 'image', 'fetched', 'requests', 'chunks', 'mem hits', 'disk hits', 'served', 'fetched %']];
  for (const l of s.layers) {
    rows.push([
      shortDigest(l.layerDigest),
      l.lazy ? 'lazy' : 'whole',
      formatBytes(l.imageSize),
      formatBytes(l.bytesFetched),
      String(l.requests),
      `${l.chunksFetched}/${l.chunkCount}`,
      String(l.memoryHits),
      String(l.diskHits),
      formatBytes(l.bytesServed),
      percent(l.lazy ? l.bytesFetched / Math.max(1, l.blobSize) : 1),
    ]);
  }
  const t = s.total;
  rows.push(['total', '', formatBytes(t.imageSize), formatBytes(t.bytesFetched), String(t.requests), String(t.chunksFetched), String(t.memoryHits), String(t.diskHits), formatBytes(t.bytesServed), percent(t.fractionFetched)]);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const lines = [`${s.mountpoint}: ${s.reference}@${s.manifestDigest} (pid ${s.pid}, up ${s.uptimeSeconds} s)`];
  for (const r of rows) lines.push(r.map((c, i) => c.padEnd(widths[i]!)).join('  ').trimEnd());
  if (s.registry) {
    const r = s.registry;
    lines.push(`registry client: retries ${r.retries}, redirects followed ${r.redirectsFollowed}, redirect-target hits ${r.redirectTargetHits}, mirror fallbacks ${r.endpointFallbacks}, auth refreshes ${r.authRefreshes}, token renewals ${r.tokenRenewals}, range ignored ${r.rangeIgnored} times, multi-range refused ${r.multiRangeRefused} times`);
  }
  lines.push(`read errors ${t.readErrors}, verification failures ${t.verificationFailures}, retries ${t.retries}; memory cache ${formatBytes(s.memoryCache.bytes)} of ${formatBytes(s.memoryCache.maxBytes)}; disk cache ${s.diskCache.root} (corrupt entries discarded: ${s.diskCache.corruptEntries})`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

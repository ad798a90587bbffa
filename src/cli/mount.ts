// `erofs-lazy mount REF MOUNTPOINT`, `erofs-lazy umount MOUNTPOINT|--all` and `erofs-lazy stats MOUNTPOINT`.
import { mkdir, rm } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Argv } from 'yargs';
import { DEFAULT_CACHE_DIR, DEFAULT_DISK_CACHE_MAX_BYTES, DEFAULT_MEMORY_CACHE_BYTES } from '../cache/index.js';
import { DEFAULT_BACKGROUND_BYTES_PER_SECOND } from '../prefetch/background.js';
import { DEFAULT_MAX_GAP_BYTES, DEFAULT_READ_DEADLINE_MS } from '../reader/index.js';

const MiB = 1024 * 1024;
import { notifyParent, startInBackground } from '../mount/daemon.js';
import { DEFAULT_MOUNT_TIMEOUT_MS, MountServer } from '../mount/server.js';
import { fetchStats } from '../mount/stats.js';
import type { MountStats } from '../mount/stats.js';
import { DEFAULT_STATE_DIR, listMounts, mountDirFor, readState } from '../mount/state.js';
import { teardownMount } from '../mount/teardown.js';
import { hostsDirOption, platformOption, withImageAccess } from './common.js';
import { oneLineError, printJson, formatBytes, shortDigest } from './output.js';

const LOGS_SUBDIR = 'logs';

function logPathFor(stateDir: string, mountpoint: string): string {
  return join(stateDir, LOGS_SUBDIR, `${mountDirFor(stateDir, mountpoint).split('/').pop()}.log`);
}

function timestampedLog(line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}

function withStateDir<T>(y: Argv<T>): Argv<T & { 'state-dir': string }> {
  return y.option('state-dir', {
    type: 'string',
    default: DEFAULT_STATE_DIR,
    describe: 'where mount records live',
  }) as Argv<T & { 'state-dir': string }>;
}

export function registerMount(y: Argv): Argv {
  return y
    .command(
      'mount <reference> <mountpoint>',
      'mount an image lazily: only the chunks that are read are fetched',
      (c) =>
        withStateDir(withImageAccess(c))
          .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference or oci:DIR[:TAG]' })
          .positional('mountpoint', { type: 'string', demandOption: true })
          .option('foreground', { type: 'boolean', default: false, describe: 'keep serving in this process until SIGINT/SIGTERM' })
          .option('rw', { type: 'boolean', default: false, describe: 'add a writable upper layer in a temp dir, discarded at unmount' })
          .option('cache-dir', { type: 'string', default: DEFAULT_CACHE_DIR, describe: 'on-disk cache of chunks and whole layers' })
          .option('cache-max-bytes', { type: 'number', default: DEFAULT_DISK_CACHE_MAX_BYTES, describe: 'bound of the on-disk chunk cache' })
          .option('memory-cache-bytes', { type: 'number', default: DEFAULT_MEMORY_CACHE_BYTES, describe: 'bound of the in-memory chunk cache' })
          .option('read-timeout', { type: 'number', default: DEFAULT_READ_DEADLINE_MS / 1000, describe: 'seconds a read may take, retries included, before it fails with EIO' })
          .option('mount-timeout', { type: 'number', default: DEFAULT_MOUNT_TIMEOUT_MS / 1000, describe: 'seconds the registry may take to answer while mounting' })
          .option('multi-range', { type: 'boolean', default: false, describe: 'fetch distant runs of missing chunks in one multi-range request (single ranges again if the registry refuses)' })
          .option('max-gap-bytes', { type: 'number', default: DEFAULT_MAX_GAP_BYTES, describe: 'fetch missing chunks at most this many blob bytes apart in one range (gap bytes are fetched and dropped)' })
          .option('record', { type: 'string', describe: 'when unmounted, write the chunks reads asked for (first-read order) to this profile file' })
          .option('prefetch', {
            type: 'string',
            default: 'auto',
            describe: 'prefetch from a recorded profile: "auto" (one stored with the image, if any), "none", or a profile file',
          })
          .option('prefetch-path', {
            type: 'string',
            array: true,
            describe: 'after mounting, fetch what reading this path of the image needs (a file, or a directory tree); repeatable',
          })
          .option('background-fetch', { type: 'boolean', default: false, describe: 'once reads are quiet, fetch the rest of the layers in the background (paused by reads)' })
          .option('background-rate', { type: 'number', default: DEFAULT_BACKGROUND_BYTES_PER_SECOND / MiB, describe: 'MiB/s of background fetching' })
          .option('ready-fd', { type: 'number', hidden: true }),
      async (args) => {
        const mountpoint = resolve(args.mountpoint);
        const stateDir = resolve(args['state-dir']);
        if (!args.foreground) {
          const forwarded = process.argv.slice(2).filter((a) => a !== '--foreground');
          const pid = await startInBackground(process.argv[1]!, forwarded, logPathFor(stateDir, mountpoint));
          process.stdout.write(`mounted ${args.reference} at ${mountpoint} (pid ${pid}, log ${logPathFor(stateDir, mountpoint)})\n`);
          return;
        }
        const readyFd = args['ready-fd'];
        let server: MountServer;
        try {
          await mkdir(args['cache-dir'], { recursive: true });
          server = await MountServer.start({
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
            prefetchPaths: args['prefetch-path'],
            backgroundBytesPerSecond: args['background-fetch'] ? args['background-rate'] * MiB : undefined,
            prefetch: args.prefetch === 'auto' || args.prefetch === 'none' ? args.prefetch : { file: resolve(args.prefetch) },
            log: timestampedLog,
          });
        } catch (err) {
          if (readyFd !== undefined) await notifyParent(readyFd, { error: oneLineError(err) });
          throw err;
        }
        timestampedLog(`mounted ${args.reference} at ${mountpoint}`);
        if (readyFd !== undefined) await notifyParent(readyFd, { ready: true, pid: process.pid });
        await new Promise<void>((done) => {
          const onSignal = (signal: string) => {
            timestampedLog(`${signal}: unmounting ${mountpoint}`);
            server.stop().then(done, (err: unknown) => timestampedLog(`unmount failed, still serving: ${oneLineError(err)}`));
          };
          process.on('SIGTERM', () => onSignal('SIGTERM'));
          process.on('SIGINT', () => onSignal('SIGINT'));
        });
        timestampedLog(`unmounted ${mountpoint}`);
        process.exit(0);
      },
    )
    .command(
      'umount [mountpoint]',
      'unmount what `mount` made (overlay, erofs, loop devices, FUSE, process, temp dirs)',
      (c) =>
        withStateDir(c)
          .positional('mountpoint', { type: 'string' })
          .option('all', { type: 'boolean', default: false, describe: 'unmount every erofs-lazy mount, also of killed processes' })
          .check((a) => (a.all || a.mountpoint ? true : 'name a mount point or --all')),
      async (args) => {
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
      },
    )
    .command(
      'stats <mountpoint>',
      'show what a mount fetched from the registry and served from its caches',
      (c) =>
        withStateDir(c)
          .positional('mountpoint', { type: 'string', demandOption: true })
          .option('json', { type: 'boolean', default: false }),
      async (args) => {
        const mountpoint = resolve(args.mountpoint);
        const state = await readState(mountDirFor(resolve(args['state-dir']), mountpoint));
        if (!state) throw new Error(`${mountpoint} is not an erofs-lazy mount`);
        const stats = await fetchStats(state.statsSocket);
        if (args.json) printJson(stats);
        else printStats(stats);
      },
    );
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

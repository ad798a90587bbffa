// The serving side of one mount: resolves the image, opens each layer (lazily through its verified chunk
// table, or whole from the layer cache), serves the lazy layers as files of one FUSE filesystem, attaches
// read-only loop devices, mounts erofs on them and stacks the layers with overlayfs at the mount point.
// Every step is recorded in the mount state before the next one, so a crash leaves something
// `erofs-lazy umount --all` can undo.
import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { join } from 'node:path';
import { createMemoryChunkCache, openDiskChunkCache, openWholeLayerCache } from '../cache/index.js';
import type { DiskChunkCache, MemoryChunkCache } from '../cache/index.js';
import { parseSeekableAnnotations, SeekableFormatError } from '../chunktable/index.js';
import { openImageStore, RegistryStore } from '../fetch/index.js';
import type { RegistryClientEvent } from '../fetch/index.js';
import { LayerFilesystem } from '../fuse/index.js';
import type { ImageStore } from '../oci/store.js';
import type { Descriptor, ImageConfig, Platform } from '../oci/types.js';
import { MEDIA_TYPE } from '../oci/types.js';
import { multiRangeFetcherFromStore, openLazyLayer, rangeFetcherFromStore, RegistryHealth } from '../reader/index.js';
import type { LazyLayer } from '../reader/index.js';
import { zeroReadCounters } from '../reader/types.js';
import type { LayerStats } from '../reader/types.js';
import { findProfile } from '../prefetch/artifact.js';
import { BackgroundFetcher } from '../prefetch/background.js';
import { planPathPrefetch } from '../prefetch/paths.js';
import { EROFS_SUPER_OFFSET, fileSource } from '../erofs/index.js';
import type { FileSource } from '../erofs/index.js';
import { chunksOfLayer, parseProfile, profileFromLayers, serializeProfile } from '../prefetch/profile.js';
import { RecordingSource } from '../prefetch/recorder.js';
import { STARTUP_BYTES_ANNOTATION, startupChunks } from '../prefetch/startup.js';
import { serveStats, summarize } from './stats.js';
import type { MountStats, PrefetchStatus } from './stats.js';
import { mountDirFor, processAlive, readState, STATE_FILE_NAME, writeState } from './state.js';
import type { LayerMountRecord, MountState } from './state.js';
import { attachLoop, mountErofs, mountOverlay } from './system.js';
import { teardownMount } from './teardown.js';
import { fetchWholeLayer } from './wholelayer.js';
import { oneLineError } from '../util/errors.js';

/** How often the serving process checks that its mount record still exists. */
const WATCHDOG_INTERVAL_MS = 2_000;

/** Default bound on how long mount-time registry requests may take before the mount fails. */
export const DEFAULT_MOUNT_TIMEOUT_MS = 30_000;

export interface MountOptions {
  reference: string;
  /** Absolute path. */
  mountpoint: string;
  platform?: Platform;
  plainHttp: boolean;
  /** containerd-style hosts directory (mirrors, TLS), if any. */
  hostsDir?: string;
  cacheDir: string;
  cacheMaxBytes: number;
  memoryCacheBytes: number;
  rw: boolean;
  stateDir: string;
  /** Bound on one lazy read, retries included; past it the read fails with EIO. */
  readDeadlineMs: number;
  /** Bound on the registry requests made while mounting. */
  mountTimeoutMs: number;
  /** Ask for several runs of missing chunks in one multi-range request (falls back when refused). */
  multiRange?: boolean;
  /** Missing chunks separated by at most this many blob bytes are fetched in one range (default DEFAULT_MAX_GAP_BYTES). */
  maxGapBytes?: number;
  /** Write the chunks reads asked for, in first-read order, to this file when the mount stops. */
  recordPath?: string;
  /** While recording, turn the kernel's read-ahead on the layer files off (exact block ranges). */
  recordExact?: boolean;
  /**
   * Prefetch from a recorded profile after mounting: 'auto' looks for one stored with the image (a referrer
   * artifact), a path reads that file, 'none' (the default) turns prefetch off.
   */
  prefetch?: 'auto' | 'none' | { file: string };
  /** Paths of the merged image (files or directory trees) whose chunks are prefetched after mounting. */
  prefetchPaths?: string[];
  /** Fetch the rest of the lazy layers in the background once reads are quiet, at this many bytes/s (off when absent). */
  backgroundBytesPerSecond?: number;
  log: (line: string) => void;
}

/** What a layer is served by. */
/** Bytes read ahead of the kernel at the superblock, to bring its chunk in early. */
const SUPERBLOCK_WARM_BYTES = 128;

interface OpenedLayer {
  descriptor: Descriptor;
  lazy?: LazyLayer;
  /** Counters of a layer fetched whole. */
  staticStats?: LayerStats;
  file: string;
  /** The block recorder the FUSE layer reads through (mount --record). */
  recorder?: RecordingSource;
}

/** One log line per registry client event: why reads are slow (retries, redirects, ignored ranges). */
function describeRegistryEvent(e: RegistryClientEvent): string {
  switch (e.kind) {
    case 'retry':
      return `retry ${e.retry} of ${e.operation} ${e.url} in ${Math.round(e.delayMs)} ms: ${e.reason}`;
    case 'redirect':
      return `${e.operation}: followed ${e.status} redirect from ${e.from} to ${e.to}`;
    case 'redirect-target-dropped':
      return `${e.operation}: dropped remembered redirect target ${e.url}: ${e.reason}`;
    case 'auth-refresh':
      return `${e.operation}: ${e.host} refused our authorization (${e.status}); renewing it${e.credentialsReread ? ' with re-read credentials' : ''}`;
    case 'range-ignored':
      return `${e.operation}: ${e.host} ignored the Range header and sent the whole blob${e.firstForHost ? ' (first time for this host)' : ''}`;
    case 'token-renewed':
      return `${e.operation}: the token for ${e.host} expired; renewed it before sending`;
    case 'multirange-refused':
      return `${e.operation}: ${e.host} refused a multi-range request (${e.status}); using one range per request from now on`;
  }
}

function fuseFileName(digest: string): string {
  return `${digest.replace(':', '-')}.erofs`;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export class MountServer {
  private statsServer?: Server;
  private watchdog?: NodeJS.Timeout;
  private readonly startedAt = Date.now();
  private stopping?: Promise<void>;
  private prefetchStatus?: PrefetchStatus;
  private pathPrefetchStatus?: PrefetchStatus;
  private background?: BackgroundFetcher;

  private constructor(
    private state: MountState,
    private readonly options: MountOptions,
    private readonly store: ImageStore,
    private readonly layers: OpenedLayer[],
    private readonly fuse: LayerFilesystem | undefined,
    private readonly memory: MemoryChunkCache,
    private readonly disk: DiskChunkCache,
  ) {}

  /** Sets the whole mount up; on failure undoes what it did and rethrows. */
  static async start(options: MountOptions): Promise<MountServer> {
    const dir = mountDirFor(options.stateDir, options.mountpoint);
    const previous = await readState(dir);
    if (previous && processAlive(previous.pid)) {
      throw new Error(`${options.mountpoint} is already mounted by erofs-lazy (pid ${previous.pid}); run \`erofs-lazy umount ${options.mountpoint}\` first`);
    }
    if (previous) await teardownMount(previous);

    const state: MountState = {
      version: 1,
      mountpoint: options.mountpoint,
      reference: options.reference,
      dir,
      pid: process.pid,
      fuseMountpoint: join(dir, 'fuse'),
      layers: [],
      rw: options.rw,
      statsSocket: join(dir, 'stats.sock'),
      createdAt: new Date().toISOString(),
    };
    await writeState(state);
    const store = openImageStore(options.reference, {
      plainHttp: options.plainHttp,
      platform: options.platform,
      hostsDir: options.hostsDir,
      registry: {
        timeouts: { connectMs: options.mountTimeoutMs, headersMs: options.mountTimeoutMs },
        onEvent: (event) => options.log(`registry: ${describeRegistryEvent(event)}`),
      },
    });
    let fuse: LayerFilesystem | undefined;
    try {
      // Everything that waits on the registry starts as early as it can: the manifest while the caches open,
      // the config and every layer's chunk table at once (the config's diff_ids only matter for layers
      // fetched whole).
      const resolving = withTimeout(store.resolve({ platform: options.platform }), options.mountTimeoutMs, `resolving ${options.reference}`);
      resolving.catch(() => undefined);
      const memory = createMemoryChunkCache(options.memoryCacheBytes);
      const [disk, wholeCache] = await Promise.all([
        openDiskChunkCache({ root: join(options.cacheDir, 'chunks'), maxBytes: options.cacheMaxBytes }),
        openWholeLayerCache({ root: options.cacheDir }),
      ]);
      const health = new RegistryHealth();

      const resolved = await resolving;
      state.manifestDigest = resolved.descriptor.digest;
      if (resolved.manifest.layers.length === 0) throw new Error(`${options.reference} has no layers`);
      const configFetch = withTimeout(store.fetchBlob(resolved.manifest.config), options.mountTimeoutMs, 'fetching the image config').then(
        (bytes) => JSON.parse(bytes.toString('utf8')) as ImageConfig,
      );
      configFetch.catch(() => undefined);
      const diffIdOf = async (i: number) => (await configFetch).rootfs?.diff_ids?.[i];
      const settled = await Promise.allSettled(
        resolved.manifest.layers.map((desc, i) =>
          openLayer(store, desc, () => diffIdOf(i), { memory, disk, wholeCache, health, options, fuseDir: state.fuseMountpoint }),
        ),
      );
      const failed = settled.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed) {
        await Promise.all(settled.map((r) => (r.status === 'fulfilled' ? r.value.lazy?.close() : undefined)));
        throw failed.reason;
      }
      const opened = settled.map((r) => (r as PromiseFulfilledResult<OpenedLayer>).value);
      await configFetch;
      state.layers = opened.map((l) => ({ layerDigest: l.descriptor.digest, file: l.file, lazy: l.lazy !== undefined }));
      await writeState(state);

      // The kernel reads every layer's superblock as soon as erofs is mounted on it: fetch that chunk now, so
      // the fetch overlaps the FUSE, loop and erofs set-up (a failure surfaces on the kernel's own read).
      for (const l of opened) l.lazy?.read(EROFS_SUPER_OFFSET, SUPERBLOCK_WARM_BYTES).catch(() => undefined);
      // Recording: the FUSE layer reads through block recorders; recordExact turns the kernel's read-ahead
      // off so that the record holds what the filesystem asked for, not its neighbours.
      const record = options.recordPath !== undefined;
      const lazySources = opened.flatMap((l) => {
        if (!l.lazy) return [];
        if (record) l.recorder = new RecordingSource(l.lazy);
        return [l.recorder ?? l.lazy];
      });
      if (lazySources.length > 0) {
        await mkdir(state.fuseMountpoint, { recursive: true });
        fuse = new LayerFilesystem(lazySources, { log: options.log, noReadAhead: record && options.recordExact === true });
        await fuse.mount(state.fuseMountpoint);
      }

      const server = new MountServer(state, options, store, opened, fuse, memory, disk);
      // Prefetch starts now, so its first requests overlap the loop, erofs and overlay set-up.
      if (options.prefetch !== undefined && options.prefetch !== 'none') server.startPrefetch(options.prefetch, resolved.descriptor);
      if (options.prefetchPaths !== undefined && options.prefetchPaths.length > 0) server.startPathPrefetch(options.prefetchPaths);
      await server.mountLayers();
      server.statsServer = await serveStats(state.statsSocket, () => server.stats());
      server.watchdog = setInterval(() => server.checkRecord(), WATCHDOG_INTERVAL_MS);
      server.watchdog.unref();
      const lazyLayers = opened.flatMap((l) => (l.lazy ? [l.lazy] : []));
      if (options.backgroundBytesPerSecond !== undefined && lazyLayers.length > 0) {
        server.background = new BackgroundFetcher(lazyLayers, { bytesPerSecond: options.backgroundBytesPerSecond, log: options.log });
      }
      return server;
    } catch (err) {
      await teardownMount(state, { unmountFuse: async () => fuse?.unmount() }).catch((e: Error) =>
        options.log(`cleanup after a failed mount left something behind: ${e.message}`),
      );
      await store.close();
      throw err;
    }
  }

  private async mountLayers(): Promise<void> {
    const { state } = this;
    for (const [i, layer] of state.layers.entries()) {
      layer.loopDevice = await attachLoop(layer.file);
      await writeState(state);
      const single = state.layers.length === 1 && !state.rw;
      const target = single ? state.mountpoint : join(state.dir, 'layers', String(i));
      await mkdir(target, { recursive: true });
      if (single) {
        state.top = 'erofs';
        await writeState(state);
        await mountErofs(layer.loopDevice, target);
      } else {
        layer.erofsMountpoint = target;
        await writeState(state);
        await mountErofs(layer.loopDevice, target);
      }
    }
    if (state.top === 'erofs') return;
    await mkdir(state.mountpoint, { recursive: true });
    const lowers = state.layers.map((l) => l.erofsMountpoint!).reverse();
    let rw: { upper: string; work: string } | undefined;
    if (state.rw) {
      rw = { upper: join(state.dir, 'rw/upper'), work: join(state.dir, 'rw/work') };
      await mkdir(rw.upper, { recursive: true });
      await mkdir(rw.work, { recursive: true });
    }
    state.top = 'overlay';
    await writeState(state);
    await mountOverlay(lowers, state.mountpoint, rw);
  }

  /**
   * Prefetches in the background (reads keep priority: prefetch requests only take free request slots):
   * 'auto' takes the start-up region of layers laid out by `convert --hot-paths` (their landmark annotation,
   * no registry lookup), else the profile stored with the image; a file names a recorded profile. Failures
   * are logged and shown in stats; they never fail the mount.
   */
  private startPrefetch(source: 'auto' | { file: string }, image: Descriptor): void {
    const started = Date.now();
    const lazyLayers = this.layers.flatMap((l) => (l.lazy ? [l.lazy] : []));
    const run = async (): Promise<void> => {
      let plan: Array<{ layer: LazyLayer; chunks: number[] }>;
      let origin: string;
      const startup =
        source === 'auto'
          ? lazyLayers.map((layer) => ({ layer, chunks: startupChunks(layer.descriptor, layer.size, layer.table.chunkSize) })).filter((p) => p.chunks.length > 0)
          : [];
      if (startup.length > 0) {
        plan = startup;
        origin = `start-up layout (${STARTUP_BYTES_ANNOTATION})`;
      } else if (source === 'auto') {
        const profile = await withTimeout(findProfile(this.store, image), this.options.mountTimeoutMs, 'looking for a prefetch profile');
        origin = `registry referrer of ${image.digest}`;
        if (!profile) {
          this.options.log(`prefetch: no profile stored with ${image.digest}`);
          return;
        }
        plan = lazyLayers.map((layer) => ({ layer, chunks: chunksOfLayer(profile, layer.layerDigest) }));
      } else {
        origin = source.file;
        const profile = parseProfile(await readFile(source.file), source.file);
        plan = lazyLayers.map((layer) => ({ layer, chunks: chunksOfLayer(profile, layer.layerDigest) }));
      }
      const status: PrefetchStatus = { source: origin, chunks: plan.reduce((n, p) => n + p.chunks.length, 0), state: 'running' };
      this.prefetchStatus = status;
      this.options.log(`prefetch: ${status.chunks} chunks from ${origin}`);
      const results = await Promise.allSettled(plan.filter((p) => p.chunks.length > 0).map((p) => p.layer.prefetch(p.chunks)));
      status.ms = Date.now() - started;
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      status.state = failed ? 'failed' : 'done';
      if (failed) status.error = oneLineError(failed.reason);
      this.options.log(`prefetch: ${status.state} in ${status.ms} ms${failed ? `: ${status.error}` : ''}`);
    };
    run().catch((err: unknown) => {
      this.prefetchStatus = { source: source === 'auto' ? 'registry' : source.file, chunks: 0, state: 'failed', ms: Date.now() - started, error: oneLineError(err) };
      this.options.log(`prefetch: failed: ${oneLineError(err)}`);
    });
  }

  /**
   * Prefetches the chunks that reading `paths` of the merged image touches (resolved with the user-space EROFS
   * reader over the layers as served), in the background; like profile prefetch, it never fails the mount.
   */
  private startPathPrefetch(paths: string[]): void {
    const started = Date.now();
    const status: PrefetchStatus = { source: `paths ${paths.join(', ')}`, chunks: 0, state: 'running' };
    this.pathPrefetchStatus = status;
    const run = async (): Promise<void> => {
      const opened: FileSource[] = [];
      try {
        const layers = await Promise.all(
          this.layers.map(async (l) => {
            if (l.lazy) return { source: l.lazy, chunkSize: l.lazy.table.chunkSize };
            const source = await fileSource(l.file);
            opened.push(source);
            return { source };
          }),
        );
        const plan = await planPathPrefetch(layers, paths);
        if (plan.missing.length > 0) this.options.log(`prefetch: not in the image: ${plan.missing.join(', ')}`);
        status.chunks = [...plan.chunks.values()].reduce((n, c) => n + c.length, 0);
        this.options.log(`prefetch: ${status.chunks} chunks for ${paths.length} path(s)${plan.truncated ? ' (walk cut at its entry limit)' : ''}`);
        await Promise.all([...plan.chunks].map(([index, chunks]) => this.layers[index]!.lazy!.prefetch(chunks)));
      } finally {
        await Promise.all(opened.map((f) => f.close().catch(() => undefined)));
      }
    };
    run().then(
      () => {
        status.state = 'done';
        status.ms = Date.now() - started;
        this.options.log(`prefetch: paths done in ${status.ms} ms`);
      },
      (err: unknown) => {
        status.state = 'failed';
        status.ms = Date.now() - started;
        status.error = oneLineError(err);
        this.options.log(`prefetch: paths failed: ${status.error}`);
      },
    );
  }

  /** Writes the profile of what reads asked for so far (recordPath), atomically. */
  private async writeRecord(): Promise<void> {
    const path = this.options.recordPath;
    if (path === undefined) return;
    const recorded = this.layers.flatMap((l) => {
      const lazy = l.lazy;
      if (!lazy) return [];
      const recorder = l.recorder;
      return [{ layerDigest: lazy.layerDigest, accessLog: () => lazy.accessLog(), rangeLog: () => recorder?.rangeLog() ?? [] }];
    });
    const profile = profileFromLayers(this.state.manifestDigest ?? '', recorded);
    const temp = `${path}.tmp-${process.pid}`;
    await writeFile(temp, serializeProfile(profile));
    await rename(temp, path);
    this.options.log(`recorded ${profile.chunks.length} chunks and ${profile.ranges.length} block ranges to ${path}`);
  }

  /**
   * A mount whose record was removed behind its back (its dirs deleted, its mounts forced away) has nothing
   * left to serve: tear down what remains and exit instead of lingering.
   */
  private checkRecord(): void {
    if (existsSync(join(this.state.dir, STATE_FILE_NAME))) return;
    this.options.log(`mount record ${this.state.dir} is gone; stopping`);
    this.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  }

  stats(): MountStats {
    const layers = this.layers.map((l) => l.lazy?.stats() ?? l.staticStats!);
    return {
      mountpoint: this.state.mountpoint,
      reference: this.state.reference,
      manifestDigest: this.state.manifestDigest ?? '',
      pid: process.pid,
      uptimeSeconds: Math.round((Date.now() - this.startedAt) / 1000),
      layers,
      total: summarize(layers),
      registry: this.store instanceof RegistryStore ? { ...this.store.stats } : undefined,
      memoryCache: { bytes: this.memory.size, maxBytes: this.memory.maxSize },
      diskCache: { root: this.disk.root, maxBytes: this.disk.maxBytes, corruptEntries: this.disk.corruptEntries },
      ...(this.prefetchStatus ? { prefetch: { ...this.prefetchStatus } } : {}),
      ...(this.pathPrefetchStatus ? { pathPrefetch: { ...this.pathPrefetchStatus } } : {}),
      ...(this.background ? { background: { ...this.background.status } } : {}),
    };
  }

  /** Tears the mount down (idempotent). Rejects with MountBusyError, leaving everything serving, when busy. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      clearInterval(this.watchdog);
      await this.background?.stop();
      await this.writeRecord().catch((err: unknown) => this.options.log(`could not write the prefetch record ${this.options.recordPath}: ${oneLineError(err)}`));
      const current = (await readState(this.state.dir)) ?? this.state;
      await teardownMount(current, { unmountFuse: async () => this.fuse?.unmount() });
      // Chunks fetched last may still be on their way to the disk cache: let them land before the process exits.
      await Promise.all(this.layers.map((l) => l.lazy?.close()));
      this.statsServer?.close();
      await this.store.close();
    })().catch((err: unknown) => {
      this.stopping = undefined;
      throw err;
    });
    return this.stopping;
  }
}

async function openLayer(
  store: ImageStore,
  desc: Descriptor,
  diffId: () => Promise<string | undefined>,
  ctx: {
    memory: MemoryChunkCache;
    disk: DiskChunkCache;
    health: RegistryHealth;
    wholeCache: Awaited<ReturnType<typeof openWholeLayerCache>>;
    options: MountOptions;
    fuseDir: string;
  },
): Promise<OpenedLayer> {
  const { options } = ctx;
  let reason: string;
  const verdict = desc.mediaType === MEDIA_TYPE.erofsZstd ? parseSeekableAnnotations(desc) : undefined;
  if (verdict?.kind === 'seekable') {
    try {
      const lazy = await withTimeout(
        openLazyLayer({
          name: fuseFileName(desc.digest),
          descriptor: desc,
          fetchRange: rangeFetcherFromStore(store, desc),
          fetchRanges: multiRangeFetcherFromStore(store, desc),
          memory: ctx.memory,
          disk: ctx.disk,
          options: { readDeadlineMs: options.readDeadlineMs, health: ctx.health, multiRange: options.multiRange, maxGapBytes: options.maxGapBytes },
          log: options.log,
        }),
        options.mountTimeoutMs,
        `layer ${desc.digest}: fetching the chunk table`,
      );
      return { descriptor: desc, lazy, file: join(ctx.fuseDir, lazy.name) };
    } catch (err) {
      // A table without per-chunk hashes cannot anchor lazy reads (spec rule 19): serve the layer whole.
      if (!(err instanceof SeekableFormatError && err.rule === 19)) throw err;
      reason = 'its chunk table has no per-chunk hashes (HashAlgo 0)';
    }
  } else {
    reason = verdict ? verdict.reason : `media type ${desc.mediaType} is not seekable EROFS`;
  }
  const whole = await fetchWholeLayer(store, desc, await diffId(), ctx.wholeCache);
  options.log(`layer ${desc.digest} is not lazy: ${reason}; ${whole.fetched ? 'fetched whole' : 'found whole in the cache'}`);
  const { size } = await stat(whole.path);
  return {
    descriptor: desc,
    file: whole.path,
    staticStats: {
      layerDigest: desc.digest,
      imageSize: size,
      blobSize: desc.size,
      chunkCount: 0,
      lazy: false,
      notLazyReason: reason,
      ...zeroReadCounters(),
      bytesFetched: whole.fetched ? desc.size : 0,
      requests: whole.fetched ? 1 : 0,
      fractionFetched: 1,
    },
  };
}

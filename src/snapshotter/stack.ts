// One remote layer's mount stack, in the process that serves it: the layer's LazyLayer (shared memory and
// disk chunk caches, registry health per registry host) as the only file of a FUSE mount at
// `<layer dir>/fuse`, a read-only loop device on that file, and the erofs mount at `<layer dir>/erofs`.
// InProcessLayers keeps one stack per layer digest; it runs inside `erofs-lazy serve` (--no-fuse-manager)
// or inside the detached FUSE manager (fusemanager.ts), which outlives a crashed serve.
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CHUNKS_DIR, createMemoryChunkCache, openDiskChunkCache } from '../cache/index.js';
import type { FileChunkCache, MemoryChunkCache } from '../cache/index.js';
import type { ChunkTable } from '../chunktable/index.js';
import { openImageStore, parseRegistryReference } from '../fetch/index.js';
import type { OpenImageStoreOptions, RegistryClientEvent } from '../fetch/index.js';
import { LayerFilesystem } from '../fuse/index.js';
import { attachLoop, detachLoop, loopBackingFile, mountErofs } from '../mount/system.js';
import type { ImageStore } from '../oci/store.js';
import type { Platform } from '../oci/types.js';
import { multiRangeFetcherFromStore, openLazyLayer, rangeFetcherFromStore, RegistryHealth } from '../reader/index.js';
import { findProfile } from '../prefetch/artifact.js';
import { chunksOfLayer } from '../prefetch/profile.js';
import { startupChunks } from '../prefetch/startup.js';
import { planPathPrefetch } from '../prefetch/paths.js';
import type { LayerFileSource, LazyLayer } from '../reader/index.js';
import { errorMessage } from './errors.js';
import { KeyedMutex } from './lock.js';
import { Histogram } from './metrics.js';
import type { LayerMetrics } from './metrics.js';
import type { RemoteLayerRef } from './store.js';
import { unmountPath } from './sysmounts.js';
import { fetchChunkTable, layerDir, loadSavedChunkTable, saveChunkTable } from './tables.js';

const FUSE_SUBDIR = 'fuse';
const EROFS_SUBDIR = 'erofs';
/** How long the FUSE unmount waits for a just-detached loop device to let go of the file. */
const FUSE_UNMOUNT_BUSY_WAIT_MS = 3_000;

/** How registries are reached: the JSON-serializable part of OpenImageStoreOptions. */
export interface RegistryAccess {
  plainHttp: boolean;
  hostsDir?: string;
  platform?: Platform;
}

/** What a process serving layer stacks needs (JSON-serializable: handed to the FUSE manager). */
export interface LayerServiceConfig {
  /** The snapshotter root; layers live in `<root>/layers/<alg>-<hex>`. */
  root: string;
  cacheDir: string;
  cacheMaxBytes: number;
  memoryCacheBytes: number;
  registry: RegistryAccess;
  readDeadlineMs: number;
  /** Bound on the registry requests made while a layer is set up (manifest, chunk table). */
  mountTimeoutMs: number;
  /** After mounting a layer, prefetch its chunks from the profile stored with the image (docs/prefetch.md). */
  prefetch?: boolean;
  /** Multi-range requests for distant runs of missing chunks (see `mount --multi-range`). */
  multiRange?: boolean;
  /**
   * Paths to prefetch in every remote layer that holds them (resolved in that layer alone: a snapshotter
   * mounts layers one by one), e.g. an entry point common to the images it serves.
   */
  prefetchPaths?: string[];
}

export function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function describeEvent(e: RegistryClientEvent): string {
  const detail = 'reason' in e ? `: ${e.reason}` : 'status' in e && e.status !== undefined ? ` (status ${e.status})` : '';
  return `registry ${e.kind} during ${e.operation}${detail}`;
}

/** A store reading the image by manifest digest; the registry is reached only when something is fetched. */
export function openLayerStore(config: LayerServiceConfig, imageRef: string, manifestDigest: string, log: (line: string) => void): ImageStore {
  const ref = parseRegistryReference(imageRef);
  const t = config.mountTimeoutMs;
  const options: OpenImageStoreOptions = {
    plainHttp: config.registry.plainHttp,
    platform: config.registry.platform,
    hostsDir: config.registry.hostsDir,
    registry: { timeouts: { connectMs: t, headersMs: t }, onEvent: (event) => log(`${ref.name}: ${describeEvent(event)}`) },
  };
  return openImageStore(`${ref.name}@${manifestDigest}`, options);
}

/** Times every read of a layer file for the latency histogram. */
class TimedSource implements LayerFileSource {
  constructor(
    private readonly inner: LazyLayer,
    readonly latency: Histogram,
  ) {}

  get name(): string {
    return this.inner.name;
  }

  get size(): number {
    return this.inner.size;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    const start = process.hrtime.bigint();
    try {
      return await this.inner.read(offset, length);
    } finally {
      this.latency.observe(Number(process.hrtime.bigint() - start) / 1e9);
    }
  }
}

interface Stack {
  digest: string;
  store: ImageStore;
  lazy?: LazyLayer;
  fuse?: LayerFilesystem;
  latency: Histogram;
  loopDevice?: string;
  erofsDir: string;
}

/** The layer stacks of one process, by layer digest. */
export class InProcessLayers {
  readonly config: LayerServiceConfig;
  readonly #log: (line: string) => void;
  readonly #memory: MemoryChunkCache;
  readonly #disk: FileChunkCache;
  readonly #stacks = new Map<string, Stack>();
  readonly #health = new Map<string, RegistryHealth>();
  readonly #locks = new KeyedMutex();

  private constructor(config: LayerServiceConfig, memory: MemoryChunkCache, disk: FileChunkCache, log: (line: string) => void) {
    this.config = config;
    this.#memory = memory;
    this.#disk = disk;
    this.#log = log;
  }

  static async open(config: LayerServiceConfig, log: (line: string) => void): Promise<InProcessLayers> {
    const memory = createMemoryChunkCache(config.memoryCacheBytes);
    const disk = await openDiskChunkCache({ root: join(config.cacheDir, CHUNKS_DIR), maxBytes: config.cacheMaxBytes });
    return new InProcessLayers(config, memory, disk, log);
  }

  #healthFor(imageRef: string): RegistryHealth {
    const host = parseRegistryReference(imageRef).registry;
    let h = this.#health.get(host);
    if (!h) {
      h = new RegistryHealth();
      this.#health.set(host, h);
    }
    return h;
  }

  /** The layer's verified table: saved on disk, else (missing or damaged) fetched again and saved. */
  async #tableFor(ref: RemoteLayerRef, store: ImageStore): Promise<ChunkTable> {
    const desc = ref.descriptor;
    try {
      const saved = await loadSavedChunkTable(this.config.root, desc);
      if (saved) return saved;
    } catch (err) {
      this.#log(`saved chunk table of layer ${desc.digest} is unusable (${errorMessage(err)}); fetching it again`);
    }
    const { table, frame } = await withTimeout(
      fetchChunkTable(desc, (start, end) => store.fetchRange(desc, start, end)),
      this.config.mountTimeoutMs,
      `layer ${desc.digest}: fetching the chunk table`,
    );
    await saveChunkTable(this.config.root, desc.digest, frame);
    return table;
  }

  /** Mounts the layer (once; later calls return the same erofs dir). */
  mount(ref: RemoteLayerRef): Promise<{ erofsDir: string }> {
    const digest = ref.descriptor.digest;
    return this.#locks.run(digest, async () => {
      const existing = this.#stacks.get(digest);
      if (existing) return { erofsDir: existing.erofsDir };
      const dir = layerDir(this.config.root, digest);
      await mkdir(dir, { recursive: true, mode: 0o700 });
      const stack: Stack = {
        digest,
        store: openLayerStore(this.config, ref.imageRef, ref.manifestDigest, this.#log),
        latency: new Histogram(),
        erofsDir: join(dir, EROFS_SUBDIR),
      };
      try {
        const table = await this.#tableFor(ref, stack.store);
        stack.lazy = await openLazyLayer({
          descriptor: ref.descriptor,
          table,
          fetchRange: rangeFetcherFromStore(stack.store, ref.descriptor),
          fetchRanges: multiRangeFetcherFromStore(stack.store, ref.descriptor),
          memory: this.#memory,
          disk: this.#disk,
          options: { readDeadlineMs: this.config.readDeadlineMs, health: this.#healthFor(ref.imageRef), multiRange: this.config.multiRange },
          log: this.#log,
        });
        const fuse = new LayerFilesystem([new TimedSource(stack.lazy, stack.latency)], { log: this.#log });
        await fuse.mount(join(dir, FUSE_SUBDIR));
        stack.fuse = fuse;
        stack.loopDevice = await attachLoop(fuse.pathOf(stack.lazy.name));
        await mkdir(stack.erofsDir, { recursive: true });
        await mountErofs(stack.loopDevice, stack.erofsDir);
      } catch (err) {
        await this.#teardown(stack).catch((e: unknown) => this.#log(`cleanup after failing to mount layer ${digest}: ${errorMessage(e)}`));
        throw err;
      }
      this.#stacks.set(digest, stack);
      if (this.config.prefetch) this.#prefetch(stack, ref);
      if (this.config.prefetchPaths?.length) this.#prefetchPaths(stack, this.config.prefetchPaths);
      return { erofsDir: stack.erofsDir };
    });
  }

  /**
   * Prefetches in the background (reads keep priority) the layer's start-up region when `convert --hot-paths`
   * laid it out (its landmark annotation), else the chunks named by the prefetch profile stored with the
   * image; a missing or broken profile is logged, never an error.
   */
  #prefetch(stack: Stack, ref: RemoteLayerRef): void {
    const lazy = stack.lazy;
    if (!lazy) return;
    const started = Date.now();
    (async () => {
      let chunks = startupChunks(lazy.descriptor, lazy.size, lazy.table.chunkSize);
      let origin = 'start-up region';
      if (chunks.length === 0 && ref.manifestDigest) {
        const image = { mediaType: '', digest: ref.manifestDigest, size: 0 };
        const profile = await withTimeout(findProfile(stack.store, image), this.config.mountTimeoutMs, 'looking for a prefetch profile');
        chunks = profile ? chunksOfLayer(profile, stack.digest) : [];
        origin = "image's profile";
      }
      if (chunks.length === 0) return;
      await lazy.prefetch(chunks);
      this.#log(`layer ${stack.digest}: prefetched ${chunks.length} chunks of the ${origin} in ${Date.now() - started} ms`);
    })().catch((err: unknown) => this.#log(`layer ${stack.digest}: prefetch failed: ${errorMessage(err)}`));
  }

  /** Prefetches what reading `paths` needs in this layer (paths it does not hold are skipped), in the background. */
  #prefetchPaths(stack: Stack, paths: string[]): void {
    const lazy = stack.lazy;
    if (!lazy) return;
    const started = Date.now();
    (async () => {
      const plan = await planPathPrefetch([{ source: lazy, chunkSize: lazy.table.chunkSize }], paths);
      const chunks = plan.chunks.get(0) ?? [];
      if (chunks.length === 0) return;
      await lazy.prefetch(chunks);
      this.#log(`layer ${stack.digest}: prefetched ${chunks.length} chunks for the prefetch paths in ${Date.now() - started} ms`);
    })().catch((err: unknown) => this.#log(`layer ${stack.digest}: path prefetch failed: ${errorMessage(err)}`));
  }

  /** Unmounts what exists of a stack: erofs, loop device, FUSE; closes its reader and store. */
  async #teardown(stack: Stack): Promise<void> {
    const problems: string[] = [];
    const step = async (what: string, fn: () => Promise<unknown>): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        problems.push(`${what}: ${errorMessage(err)}`);
      }
    };
    await step(`unmounting ${stack.erofsDir}`, () => unmountPath(stack.erofsDir));
    const fuse = stack.fuse;
    const mnt = fuse?.mountpoint;
    if (stack.loopDevice && mnt && stack.lazy) {
      const file = join(mnt, stack.lazy.name);
      const device = stack.loopDevice;
      await step(`detaching ${device}`, async () => {
        if ((await loopBackingFile(device)) === file) await detachLoop(device);
      });
    }
    if (fuse && mnt) {
      await step(`unmounting FUSE ${mnt}`, async () => {
        try {
          await fuse.unmount({ busyWaitMs: FUSE_UNMOUNT_BUSY_WAIT_MS });
        } catch (err) {
          // Still used (a running container's overlay keeps the erofs and its loop device): cut it loose.
          this.#log(`FUSE ${mnt} of layer ${stack.digest} is still in use (${errorMessage(err)}); detaching it`);
          await LayerFilesystem.forceUnmount(mnt);
        }
      });
    }
    if (stack.lazy) await step('closing the layer reader', () => stack.lazy!.close());
    await step('closing the registry store', () => stack.store.close());
    if (problems.length > 0) throw new Error(`layer ${stack.digest}: ${problems.join('; ')}`);
  }

  /** Unmounts a layer; an unknown digest is not an error. */
  unmount(digest: string): Promise<void> {
    return this.#locks.run(digest, async () => {
      const stack = this.#stacks.get(digest);
      if (!stack) return;
      this.#stacks.delete(digest);
      await this.#teardown(stack);
    });
  }

  mounted(): string[] {
    return [...this.#stacks.keys()];
  }

  erofsDirOf(digest: string): string | undefined {
    return this.#stacks.get(digest)?.erofsDir;
  }

  /** Removes a layer's chunks from the disk cache. */
  removeCached(digest: string): Promise<void> {
    return this.#disk.removeLayer(digest);
  }

  async cacheUsage(digest: string): Promise<{ bytes: number; chunks: number }> {
    const u = (await this.#disk.usage()).find((l) => l.layerDigest === digest);
    return { bytes: u?.bytes ?? 0, chunks: u?.chunks ?? 0 };
  }

  metrics(): LayerMetrics[] {
    return [...this.#stacks.values()].flatMap((s) =>
      s.lazy && s.fuse ? [{ layerDigest: s.digest, stats: s.lazy.stats(), fuse: s.fuse.stats(), latency: s.latency.snapshot() }] : [],
    );
  }

  /** Unmounts every layer. */
  async close(): Promise<void> {
    const failures: string[] = [];
    for (const digest of this.mounted()) await this.unmount(digest).catch((err: unknown) => failures.push(errorMessage(err)));
    if (failures.length > 0) throw new Error(`unmounting layers: ${failures.join('; ')}`);
  }
}

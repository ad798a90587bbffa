// Remote layers as the snapshotter sees them: a layer named by Prepare's labels is resolved from its image
// manifest (fetched by digest, so the descriptor is trusted) and its chunk table fetched, verified and saved
// (tables.ts); then its stack (LazyLayer → FUSE → loop → erofs, stack.ts) is mounted once by a LayerBackend,
// however many snapshots show it, and each snapshot sees it through a bind mount of the layer's erofs dir
// at its own `snapshots/<id>/fs` (short overlay lowerdirs). The backend is the detached FUSE manager
// (fusemanager.ts, the default: layers outlive a serve crash) or this process (InProcessLayers).
// When the last snapshot using a layer goes, the layer is unmounted and its cached chunks and table removed.
import { mkdir, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { parseSeekableAnnotations } from '../chunktable/index.js';
import { MEDIA_TYPE } from '../oci/types.js';
import { errorMessage } from './errors.js';
import { KeyedMutex } from './lock.js';
import type { LayerMetrics } from './metrics.js';
import type { RemoteLayerProvider, RemoteLayerRequest, SnapshotUsage } from './snapshots.js';
import { openLayerStore, withTimeout } from './stack.js';
import type { InProcessLayers, LayerServiceConfig } from './stack.js';
import type { RemoteLayerRef } from './store.js';
import { bindMount, unmountPath } from './sysmounts.js';
import { digestOfLayerDirName, fetchChunkTable, LAYERS_DIR, removeLayerDir, saveChunkTable } from './tables.js';

/** Where layer stacks are mounted and served. */
export interface LayerBackend {
  /** Mounts the layer's stack (its saved chunk table must exist or be fetchable); returns its erofs dir. */
  mount(ref: RemoteLayerRef): Promise<{ erofsDir: string }>;
  /** Unmounts the layer's stack; an unknown layer is not an error. */
  unmount(digest: string): Promise<void>;
  /** Digests of the layers mounted now. */
  mounted(): Promise<string[]>;
  /** Removes the layer's chunks from the disk cache. */
  removeCached(digest: string): Promise<void>;
  cacheUsage(digest: string): Promise<{ bytes: number; chunks: number }>;
  metrics(): Promise<LayerMetrics[]>;
  /** Unmounts every layer and stops serving them. */
  close(): Promise<void>;
}

/** InProcessLayers as a LayerBackend. */
export function inProcessBackend(layers: InProcessLayers): LayerBackend {
  return {
    mount: (ref) => layers.mount(ref),
    unmount: (digest) => layers.unmount(digest),
    mounted: async () => layers.mounted(),
    removeCached: (digest) => layers.removeCached(digest),
    cacheUsage: (digest) => layers.cacheUsage(digest),
    metrics: async () => layers.metrics(),
    close: () => layers.close(),
  };
}

interface AttachedLayer {
  erofsDir: string;
  /** Snapshot id → its fs dir (a bind mount of erofsDir). */
  users: Map<string, string>;
}

export class RemoteLayerManager implements RemoteLayerProvider {
  readonly #config: LayerServiceConfig;
  readonly #backend: LayerBackend;
  readonly #log: (line: string) => void;
  readonly #layers = new Map<string, AttachedLayer>();
  readonly #locks = new KeyedMutex();

  constructor(config: LayerServiceConfig, backend: LayerBackend, log: (line: string) => void) {
    this.#config = config;
    this.#backend = backend;
    this.#log = log;
  }

  static async open(config: LayerServiceConfig, backend: LayerBackend, log: (line: string) => void): Promise<RemoteLayerManager> {
    await mkdir(join(config.root, LAYERS_DIR), { recursive: true, mode: 0o700 });
    return new RemoteLayerManager(config, backend, log);
  }

  async resolve(request: RemoteLayerRequest): Promise<RemoteLayerRef | { notRemote: string }> {
    const timeout = this.#config.mountTimeoutMs;
    const store = openLayerStore(this.#config, request.imageRef, request.manifestDigest, this.#log);
    try {
      const resolved = await withTimeout(store.resolve(), timeout, `resolving manifest ${request.manifestDigest} of ${request.imageRef}`);
      const desc = resolved.manifest.layers.find((l) => l.digest === request.layerDigest);
      if (!desc) throw new Error(`manifest ${resolved.descriptor.digest} of ${request.imageRef} does not list layer ${request.layerDigest}`);
      if (desc.mediaType !== MEDIA_TYPE.erofsZstd) return { notRemote: `media type ${desc.mediaType} is not seekable EROFS` };
      const verdict = parseSeekableAnnotations(desc);
      if (verdict.kind !== 'seekable') return { notRemote: verdict.reason };
      const ref: RemoteLayerRef = { imageRef: request.imageRef, manifestDigest: resolved.descriptor.digest, descriptor: desc };
      if (this.#layers.has(desc.digest)) return ref;
      const { table, frame } = await withTimeout(
        fetchChunkTable(desc, (start, end) => store.fetchRange(desc, start, end)),
        timeout,
        `layer ${desc.digest}: fetching the chunk table`,
      );
      if (!table.verifiable) return { notRemote: 'its chunk table has no per-chunk hashes (HashAlgo 0)' };
      await saveChunkTable(this.#config.root, desc.digest, frame);
      return ref;
    } finally {
      await store.close();
    }
  }

  attach(snapshotId: string, ref: RemoteLayerRef, fsDir: string): Promise<void> {
    const digest = ref.descriptor.digest;
    return this.#locks.run(digest, async () => {
      let layer = this.#layers.get(digest);
      if (!layer) {
        const { erofsDir } = await this.#backend.mount(ref);
        layer = { erofsDir, users: new Map() };
        this.#layers.set(digest, layer);
      }
      if (layer.users.get(snapshotId) === fsDir) return;
      try {
        await mkdir(fsDir, { recursive: true });
        await bindMount(layer.erofsDir, fsDir);
      } catch (err) {
        if (layer.users.size === 0) {
          this.#layers.delete(digest);
          await this.#backend.unmount(digest).catch((e: unknown) => this.#log(`unmounting unused layer ${digest}: ${errorMessage(e)}`));
        }
        throw err;
      }
      layer.users.set(snapshotId, fsDir);
    });
  }

  isAttached(snapshotId: string): boolean {
    for (const layer of this.#layers.values()) if (layer.users.has(snapshotId)) return true;
    return false;
  }

  detach(snapshotId: string, layerDigest: string, fsDir: string, lastUse: boolean): Promise<void> {
    return this.#locks.run(layerDigest, async () => {
      await unmountPath(fsDir);
      const layer = this.#layers.get(layerDigest);
      layer?.users.delete(snapshotId);
      if (layer && layer.users.size > 0) return;
      this.#layers.delete(layerDigest);
      await this.#backend.unmount(layerDigest);
      if (!lastUse) return;
      await this.#backend.removeCached(layerDigest);
      await removeLayerDir(this.#config.root, layerDigest);
      this.#log(`layer ${layerDigest}: unmounted; its cached chunks and table removed`);
    });
  }

  /** Unmounts layers the backend has mounted that no snapshot uses (e.g. adopted after a restart). */
  async releaseUnused(): Promise<string[]> {
    const released: string[] = [];
    for (const digest of await this.#backend.mounted()) {
      await this.#locks.run(digest, async () => {
        if (this.#layers.has(digest)) return;
        await this.#backend.unmount(digest);
        released.push(digest);
      });
    }
    return released;
  }

  async usage(layerDigest: string): Promise<SnapshotUsage> {
    const u = await this.#backend.cacheUsage(layerDigest);
    return { size: u.bytes, inodes: u.chunks };
  }

  async cleanup(inUse: ReadonlySet<string>): Promise<void> {
    let names: string[];
    try {
      names = await readdir(join(this.#config.root, LAYERS_DIR));
    } catch {
      return;
    }
    const mounted = new Set(await this.#backend.mounted());
    for (const name of names) {
      const digest = digestOfLayerDirName(name);
      if (!digest || inUse.has(digest) || this.#layers.has(digest) || mounted.has(digest)) continue;
      await this.#locks.run(digest, async () => {
        if (this.#layers.has(digest)) return;
        await this.#backend.removeCached(digest);
        await removeLayerDir(this.#config.root, digest);
        this.#log(`cleanup: removed unused layer ${digest} (cached chunks and table)`);
      });
    }
  }

  metrics(): Promise<LayerMetrics[]> {
    return this.#backend.metrics();
  }

  /** Unmounts the snapshots' bind mounts and every layer (caches and saved tables stay for the next start). */
  async close(): Promise<void> {
    const failures: string[] = [];
    for (const [digest, layer] of [...this.#layers]) {
      await this.#locks.run(digest, async () => {
        for (const fsDir of layer.users.values()) await unmountPath(fsDir);
        this.#layers.delete(digest);
      }).catch((err: unknown) => failures.push(errorMessage(err)));
    }
    await this.#backend.close().catch((err: unknown) => failures.push(errorMessage(err)));
    if (failures.length > 0) throw new Error(`unmounting layers: ${failures.join('; ')}`);
  }
}

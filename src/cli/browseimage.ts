// The image side of `ls`, `cat` and `stat`: resolves a reference, and opens the layers a command needs as
// lazy chunk sources (the same LazyLayer as the FUSE read path: memory cache, optional disk cache shared
// with mounts, coalesced and verified range fetches) under the user-space EROFS reader, merged with overlay
// semantics or one layer as it is. Every blob byte fetched (chunk tables included) is counted per layer.
// Layers that are not seekable EROFS are refused with a one-line reason: these commands never download a
// whole layer.
import { join } from 'node:path';
import { CHUNKS_DIR, createMemoryChunkCache, DEFAULT_DISK_CACHE_MAX_BYTES, openDiskChunkCache } from '../cache/index.js';
import type { DiskChunkCache, MemoryChunkCache } from '../cache/index.js';
import { parseSeekableAnnotations, SeekableFormatError } from '../chunktable/index.js';
import { ErofsImage, LayeredView } from '../erofs/index.js';
import { openImageStore } from '../fetch/index.js';
import type { ImageStore } from '../oci/store.js';
import type { Descriptor } from '../oci/types.js';
import { openLazyLayer, rangeFetcherFromStore } from '../reader/index.js';
import type { LazyLayer, RangeFetcher } from '../reader/index.js';
import { imageStoreOptions } from './imageargs.js';
import type { ImageAccessArgs } from './common.js';

/** In-memory chunk cache of one command. */
export const DEFAULT_BROWSE_MEMORY_CACHE_BYTES = 64 * 1024 * 1024;
/** Shortest digest prefix accepted by --layer. */
const MIN_DIGEST_PREFIX = 6;

export interface LayerFetchStats {
  index: number;
  digest: string;
  blobSize: number;
  /** Whether the command opened this layer. */
  opened: boolean;
  bytesFetched: number;
  requests: number;
  chunksFetched: number;
  chunkCount: number;
}

export interface BrowseStats {
  bytesFetched: number;
  requests: number;
  /** Sum of the blob sizes of every layer of the image. */
  blobBytes: number;
  /** bytesFetched / blobBytes. */
  fractionFetched: number;
  layers: LayerFetchStats[];
}

export interface BrowseOpenOptions {
  /** Chunk read-ahead for sequential reads (cat); metadata walks turn it off so they fetch only what they touch. */
  readahead: boolean;
  /** Directory of an on-disk chunk cache (shared with mounts: its "chunks" subdirectory). */
  cacheDir?: string;
}

interface OpenedLayer {
  descriptor: Descriptor;
  counters: { bytes: number; requests: number };
  lazy?: LazyLayer;
  image?: Promise<ErofsImage>;
}

function countingFetcher(inner: RangeFetcher, counters: { bytes: number; requests: number }): RangeFetcher {
  return async (start, end, signal) => {
    counters.requests++;
    const data = await inner(start, end, signal);
    counters.bytes += data.length;
    return data;
  };
}

export class BrowseSession {
  readonly reference: string;
  readonly manifestDigest: string;
  readonly descriptors: readonly Descriptor[];
  readonly #store: ImageStore;
  readonly #options: BrowseOpenOptions;
  readonly #memory: MemoryChunkCache;
  readonly #disk: DiskChunkCache | undefined;
  readonly #layers: OpenedLayer[];

  private constructor(store: ImageStore, manifestDigest: string, descriptors: Descriptor[], options: BrowseOpenOptions, disk: DiskChunkCache | undefined) {
    this.#store = store;
    this.reference = store.displayName;
    this.manifestDigest = manifestDigest;
    this.descriptors = descriptors;
    this.#options = options;
    this.#memory = createMemoryChunkCache(DEFAULT_BROWSE_MEMORY_CACHE_BYTES);
    this.#disk = disk;
    this.#layers = descriptors.map((descriptor) => ({ descriptor, counters: { bytes: 0, requests: 0 } }));
  }

  static async open(reference: string, access: ImageAccessArgs, options: BrowseOpenOptions): Promise<BrowseSession> {
    const storeOptions = imageStoreOptions(access);
    const store = openImageStore(reference, storeOptions);
    try {
      const resolved = await store.resolve({ platform: storeOptions.platform });
      if (resolved.manifest.layers.length === 0) throw new Error(`${store.displayName} has no layers`);
      const disk = options.cacheDir ? await openDiskChunkCache({ root: join(options.cacheDir, CHUNKS_DIR), maxBytes: DEFAULT_DISK_CACHE_MAX_BYTES }) : undefined;
      return new BrowseSession(store, resolved.descriptor.digest, resolved.manifest.layers, options, disk);
    } catch (err) {
      await store.close();
      throw err;
    }
  }

  /** Index of the layer named by --layer: an index (0 = bottom, negative from the top) or a digest (prefix). */
  layerIndex(selector: string): number {
    const n = this.descriptors.length;
    if (/^-?\d+$/.test(selector)) {
      const i = Number(selector);
      const index = i < 0 ? n + i : i;
      if (index < 0 || index >= n) throw new Error(`--layer ${selector}: the image has ${n} layer(s), 0 (bottom) to ${n - 1} (top)`);
      return index;
    }
    const want = selector.toLowerCase();
    const matches = this.descriptors.flatMap((d, i) => {
      const hex = d.digest.slice(d.digest.indexOf(':') + 1);
      return d.digest === want || (want.length >= MIN_DIGEST_PREFIX && (hex.startsWith(want) || d.digest.startsWith(want))) ? [i] : [];
    });
    if (matches.length === 1) return matches[0]!;
    if (matches.length === 0) throw new Error(`--layer ${selector}: no layer of ${this.reference} has that digest (give a digest, a prefix of at least ${MIN_DIGEST_PREFIX} hex digits, or an index)`);
    throw new Error(`--layer ${selector}: the prefix matches ${matches.length} layers`);
  }

  /** The EROFS image of layer `index`, opened on first use. */
  layerImage(index: number): Promise<ErofsImage> {
    const layer = this.#layers[index]!;
    layer.image ??= this.#openLayer(index, layer);
    return layer.image;
  }

  async #openLayer(index: number, layer: OpenedLayer): Promise<ErofsImage> {
    const desc = layer.descriptor;
    const label = `layer ${index} (${desc.digest})`;
    const verdict = parseSeekableAnnotations(desc);
    const refuse = (why: string): Error =>
      new Error(`${label} is not seekable EROFS (${why}): ls, cat and stat read only seekable EROFS layers and never download whole layers; convert the image with \`erofs-lazy convert\``);
    if (verdict.kind !== 'seekable') throw refuse(verdict.reason);
    try {
      layer.lazy = await openLazyLayer({
        descriptor: desc,
        fetchRange: countingFetcher(rangeFetcherFromStore(this.#store, desc), layer.counters),
        memory: this.#memory,
        disk: this.#disk,
        options: { readaheadChunks: this.#options.readahead ? 1 : 0 },
      });
    } catch (err) {
      if (err instanceof SeekableFormatError && err.rule === 19) throw refuse('its chunk table has no per-chunk hashes');
      throw err;
    }
    return ErofsImage.open(layer.lazy, { label });
  }

  /** The merged view of every layer, or (with a selector) one layer as it is. */
  async view(layerSelector?: string): Promise<LayeredView> {
    if (layerSelector !== undefined) {
      return new LayeredView([await this.layerImage(this.layerIndex(layerSelector))], { raw: true });
    }
    const images: ErofsImage[] = [];
    for (let i = 0; i < this.descriptors.length; i++) images.push(await this.layerImage(i));
    return new LayeredView(images);
  }

  /** The lazy layer of index `index` (opened already). */
  lazyLayer(index: number): LazyLayer | undefined {
    return this.#layers[index]?.lazy;
  }

  stats(): BrowseStats {
    const layers = this.#layers.map((l, index): LayerFetchStats => {
      const s = l.lazy?.stats();
      return {
        index,
        digest: l.descriptor.digest,
        blobSize: l.descriptor.size,
        opened: l.lazy !== undefined,
        bytesFetched: l.counters.bytes,
        requests: l.counters.requests,
        chunksFetched: s?.chunksFetched ?? 0,
        chunkCount: s?.chunkCount ?? 0,
      };
    });
    const bytesFetched = layers.reduce((a, l) => a + l.bytesFetched, 0);
    const blobBytes = layers.reduce((a, l) => a + l.blobSize, 0);
    return {
      bytesFetched,
      requests: layers.reduce((a, l) => a + l.requests, 0),
      blobBytes,
      fractionFetched: blobBytes === 0 ? 0 : bytesFetched / blobBytes,
      layers,
    };
  }

  async close(): Promise<void> {
    for (const l of this.#layers) await l.lazy?.close();
    await this.#store.close();
  }
}

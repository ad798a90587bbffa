// Prefetch by path: the chunks of each lazy layer that reading some paths of the merged image will touch
// (files, whole directory trees, symlink targets), found with the user-space EROFS reader (src/erofs) over the
// same chunk sources the mount serves. Resolving the paths reads the metadata it needs through those sources,
// so that metadata is fetched (and cached) on the way.
import { ErofsImage, LayeredView } from '../erofs/index.js';
import type { ErofsSource } from '../erofs/index.js';
import { chunksOfRanges, pathRanges } from '../erofs/prefetch.js';

export interface PathPrefetchLayer {
  /** The layer's raw EROFS image, as the mount serves it. */
  source: ErofsSource;
  /** Chunk size of a lazily served layer; absent for a layer held whole (nothing to prefetch). */
  chunkSize?: number;
}

export interface PathPrefetchPlan {
  /** Layer index (0 = bottom) → chunk indices to prefetch, sorted. */
  chunks: Map<number, number[]>;
  /** Paths not found in the merged image (skipped). */
  missing: string[];
  /** Whether the walk stopped at its entry limit. */
  truncated: boolean;
}

/** Chunks to prefetch for `paths` over `layers` (bottom first, overlay semantics between them). */
export async function planPathPrefetch(layers: readonly PathPrefetchLayer[], paths: readonly string[]): Promise<PathPrefetchPlan> {
  const images = await Promise.all(layers.map((layer, i) => ErofsImage.open(layer.source, { label: `layer ${i}` })));
  const view = new LayeredView(images);
  const result = await pathRanges(view, [...paths]);
  const chunks = new Map<number, number[]>();
  for (const [index, ranges] of result.ranges) {
    const chunkSize = layers[index]?.chunkSize;
    if (chunkSize !== undefined) chunks.set(index, chunksOfRanges(ranges, chunkSize));
  }
  return { chunks, missing: result.missing, truncated: result.truncated };
}

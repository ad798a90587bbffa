// The start-up landmark of a layer laid out by `convert --hot-paths` (src/mkfs): an annotation on the layer
// descriptor giving how many raw-image bytes, from the start, hold the directories and the files a workload
// reads first. A mount prefetches the chunks covering them as soon as the chunk table is known, in parallel,
// the way eStargz's prefetch landmark is used: the image itself says what a start needs, no profile lookup.
import type { Descriptor } from '../oci/types.js';

/** Annotation key on a seekable EROFS layer descriptor: decimal raw-image bytes of the start-up region. */
export const STARTUP_BYTES_ANNOTATION = 'dev.erofs-lazy.layout.startup-bytes';

/** Longest decimal value accepted (keeps Number exact). */
const MAX_DIGITS = 15;

/**
 * The chunk indices of a layer's start-up region, in order; empty without (or with a malformed) annotation.
 * `imageSize` and `chunkSize` come from the verified chunk table, so a lying annotation only ever names
 * chunks that exist.
 */
export function startupChunks(desc: Descriptor, imageSize: number, chunkSize: number): number[] {
  const value = desc.annotations?.[STARTUP_BYTES_ANNOTATION];
  if (value === undefined || value.length > MAX_DIGITS || !/^[0-9]+$/.test(value) || chunkSize <= 0) return [];
  const bytes = Math.min(Number(value), imageSize);
  const count = Math.ceil(bytes / chunkSize);
  return Array.from({ length: count }, (_, i) => i);
}

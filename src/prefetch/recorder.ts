// Block-level recording of what the kernel reads from a served layer file, for `mount --record`: wraps the
// layer's read source and keeps, in first-access order, the raw-image ranges (whole blocks) read for the first
// time. These ranges are what `profile paths` maps back to files and directories, so that `convert
// --hot-paths` can put a workload's start-up files together at the front of the image.
import type { LayerFileSource } from '../reader/types.js';

/** Granularity of the record: the EROFS block size (and the page size the kernel reads in). */
export const RECORD_BLOCK_BYTES = 4096;

/** A layer source that records the blocks read through it. */
export class RecordingSource implements LayerFileSource {
  readonly name: string;
  readonly size: number;
  readonly #inner: LayerFileSource;
  readonly #clock: () => number;
  /** One bit per block: read before. */
  readonly #seen: Uint8Array;
  /** [offset, length, first access time], contiguous first reads merged. */
  readonly #log: Array<[number, number, number]> = [];

  constructor(inner: LayerFileSource, clock: () => number = () => performance.now()) {
    this.#inner = inner;
    this.name = inner.name;
    this.size = inner.size;
    this.#clock = clock;
    this.#seen = new Uint8Array(Math.ceil(Math.ceil(inner.size / RECORD_BLOCK_BYTES) / 8));
  }

  read(offset: number, length: number): Promise<Buffer> {
    this.#note(offset, length);
    return this.#inner.read(offset, length);
  }

  #note(offset: number, length: number): void {
    const end = Math.min(offset + length, this.size);
    if (offset < 0 || end <= offset) return;
    const at = this.#clock();
    for (let block = Math.floor(offset / RECORD_BLOCK_BYTES); block * RECORD_BLOCK_BYTES < end; block++) {
      const bit = 1 << (block & 7);
      if (this.#seen[block >>> 3]! & bit) continue;
      this.#seen[block >>> 3]! |= bit;
      const start = block * RECORD_BLOCK_BYTES;
      const len = Math.min(RECORD_BLOCK_BYTES, this.size - start);
      const last = this.#log[this.#log.length - 1];
      if (last && last[0] + last[1] === start) last[1] += len;
      else this.#log.push([start, len, at]);
    }
  }

  /** The recorded ranges, in first-access order. */
  rangeLog(): ReadonlyArray<readonly [offset: number, length: number, at: number]> {
    return this.#log;
  }
}

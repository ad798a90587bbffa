// Frame verification and decompression off the main thread: a small pool of worker threads (each with its own
// zstd context) that hashes (SHA-512) and decodes chunk frames, so the event loop that also serves FUSE stays
// responsive. The frames of one fetched run go to one worker in one message: their buffer is transferred when
// it owns its ArrayBuffer (else copied once), each decoded chunk comes back by transfer as soon as it is done,
// with its SHA-256 when the caller will write it to the disk cache, and the worker frees the compressed bytes
// at once. The pool also hashes (SHA-256) disk cache entries, taking their memory and handing it back, so that
// checking a cached chunk costs the main thread neither the hash nor a copy. Errors keep their class across the
// thread boundary. Tiny chunks are decoded and hashed inline, where a round trip to a worker would cost more
// than the work. Also the inline decoder with the same interface.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { decodeFrame } from '../chunktable/frame.js';
import type { ChunkTable } from '../chunktable/table.js';
import { deserializeError, ownsWholeBuffer, sha256Of, transferableView } from './decodeprotocol.js';
import type { DecodeRequest, DecodeResponse, FrameSpec } from './decodeprotocol.js';

/** Upper bound on decode workers; the pool uses min(cores, this) unless told otherwise. */
export const DEFAULT_MAX_DECODE_WORKERS = 4;
/**
 * Chunks of at most this many decoded bytes are decoded inline: hashing and decoding 64 KiB takes well under a
 * millisecond, about what posting it to a worker and back costs. Byte ranges of at most this size are also
 * hashed (sha256) inline.
 */
export const DEFAULT_INLINE_MAX_CHUNK_BYTES = 64 * 1024;

/** A decoded, verified chunk, with the SHA-256 of its bytes when it was asked for. */
export interface DecodedChunk {
  data: Buffer;
  sha256?: Uint8Array;
}

/** One frame of a run handed to decodeFrames: its chunk, where it starts in the run's bytes, its error context. */
export interface RunFrame {
  index: number;
  /** Offset of the frame's first byte in the run's bytes (Start_i − the run's start). */
  offset: number;
  /** Bytes of the frame in the run's bytes; default End_i − Start_i (a different length fails rule 13). */
  length?: number;
  context: string;
}

/** Bytes whose SHA-256 was computed, and the digest. */
export interface HashedBytes {
  /** The same bytes (possibly a new Buffer over the same memory: the input may have been taken). */
  bytes: Buffer;
  sha256: Uint8Array;
}

/** Verifies (SHA-512 first) and decodes chunk frames. */
export interface ChunkDecoder {
  readonly kind: 'inline' | 'pool';
  /**
   * Verifies and decodes chunk `index`'s frame (exactly `blob[Start_i, End_i)`) into `size_i` bytes. Rejects
   * with IntegrityError (SHA-512 mismatch) or SeekableFormatError (rules 13, 15–17, 19), whose messages end
   * with `context`. When `frame` spans a whole ArrayBuffer the decoder may take (transfer) that memory: the
   * caller must not use `frame` afterwards.
   */
  decode(table: ChunkTable, index: number, frame: Uint8Array, context: string): Promise<Buffer>;
  /**
   * Optional: verifies and decodes several frames that lie in one buffer (a fetched run), one promise per frame
   * in `frames` order, each settling like decode() would; with `sha256`, each result also carries the SHA-256
   * of the decoded chunk. Frames must lie inside `bytes`. The decoder may take `bytes`' memory when it spans a
   * whole ArrayBuffer: the caller must not use `bytes` afterwards.
   */
  decodeFrames?(table: ChunkTable, frames: readonly RunFrame[], bytes: Uint8Array, options?: { sha256?: boolean }): Array<Promise<DecodedChunk>>;
  /**
   * Optional: SHA-256 of `bytes.subarray(from)`, off the calling thread. The decoder may take `bytes`' memory
   * (when it spans a whole ArrayBuffer) and hand it back as `bytes` of the result: the caller must use that one.
   */
  sha256?(bytes: Buffer, from: number): Promise<HashedBytes>;
  /** Stops any threads; pending jobs reject. */
  close(): Promise<void>;
}

/** Decodes on the calling thread with the chunktable's shared FrameDecoder. */
export class InlineDecoder implements ChunkDecoder {
  readonly kind = 'inline';

  decode(table: ChunkTable, index: number, frame: Uint8Array, context: string): Promise<Buffer> {
    try {
      return Promise.resolve(decodeFrame(frame, index, table, { context }));
    } catch (err) {
      return Promise.reject(err);
    }
  }

  decodeFrames(table: ChunkTable, frames: readonly RunFrame[], bytes: Uint8Array, options: { sha256?: boolean } = {}): Array<Promise<DecodedChunk>> {
    return frames.map(async (f) => {
      const { start, end } = table.frameRange(f.index);
      const data = await this.decode(table, f.index, bytes.subarray(f.offset, f.offset + (f.length ?? end - start)), f.context);
      return options.sha256 ? { data, sha256: sha256Of(data) } : { data };
    });
  }

  async sha256(bytes: Buffer, from: number): Promise<HashedBytes> {
    return { bytes, sha256: sha256Of(bytes.subarray(from)) };
  }

  async close(): Promise<void> {}
}

/** A worker thread that died or could not start while it held a job. */
export class DecodeWorkerError extends Error {
  override name = 'DecodeWorkerError';
}

export interface DecodePoolOptions {
  /** Worker threads; default min(cores, DEFAULT_MAX_DECODE_WORKERS). */
  workers?: number;
  /** Decode chunks of at most this many bytes inline; default DEFAULT_INLINE_MAX_CHUNK_BYTES (0: never). */
  inlineMaxChunkBytes?: number;
}

/** One part's settlement: a frame's decoded chunk, or a hash request's bytes handed back. */
interface PartResult {
  data: Buffer;
  sha256: Uint8Array | undefined;
}

interface PendingJob {
  request: DecodeRequest;
  /** One per answer the worker sends (per frame; one for a hash request). */
  parts: Array<{ resolve: (result: PartResult) => void; reject: (err: unknown) => void }>;
  /** Answers still to come. */
  remaining: number;
  /** Names the job in a worker-failure message. */
  what: string;
}

interface Slot {
  worker: Worker;
  job: PendingJob | undefined;
}

const WORKER_URL = new URL('./decodeworker.js', import.meta.url);

export function defaultDecodeWorkers(): number {
  return Math.max(1, Math.min(availableParallelism(), DEFAULT_MAX_DECODE_WORKERS));
}

function copyOf(bytes: Uint8Array | undefined): Uint8Array | undefined {
  return bytes === undefined ? undefined : new Uint8Array(bytes);
}

/** Rejects the parts of a job that have not been answered (settling an answered part again is a no-op). */
function rejectJob(job: PendingJob, err: Error): void {
  for (const part of job.parts) part.reject(err);
}

export class DecodePool implements ChunkDecoder {
  readonly kind = 'pool';
  readonly workers: number;
  readonly inlineMaxChunkBytes: number;
  readonly #inline = new InlineDecoder();
  readonly #slots: Slot[] = [];
  readonly #idle: Slot[] = [];
  readonly #queue: PendingJob[] = [];
  #nextId = 1;
  #closed = false;
  /** Frames decoded and byte ranges hashed by workers (not inline), for tests and stats. */
  #workerJobs = 0;

  constructor(options: DecodePoolOptions = {}) {
    this.workers = options.workers ?? defaultDecodeWorkers();
    this.inlineMaxChunkBytes = options.inlineMaxChunkBytes ?? DEFAULT_INLINE_MAX_CHUNK_BYTES;
    if (!Number.isInteger(this.workers) || this.workers < 1) throw new RangeError(`decode workers ${this.workers} must be an integer >= 1`);
    if (!(this.inlineMaxChunkBytes >= 0)) throw new RangeError(`inlineMaxChunkBytes ${this.inlineMaxChunkBytes} must be >= 0`);
  }

  /** Frames decoded (and byte ranges hashed) by worker threads so far. */
  get workerJobs(): number {
    return this.#workerJobs;
  }

  /** Worker threads currently running. */
  get threads(): number {
    return this.#slots.length;
  }

  decode(table: ChunkTable, index: number, frame: Uint8Array, context: string): Promise<Buffer> {
    try {
      if (table.chunkLength(index) <= this.inlineMaxChunkBytes) return this.#inline.decode(table, index, frame, context);
    } catch (err) {
      return Promise.reject(err);
    }
    return this.decodeFrames(table, [{ index, offset: 0, length: frame.length, context }], frame)[0]!.then(({ data }) => data);
  }

  decodeFrames(table: ChunkTable, frames: readonly RunFrame[], bytes: Uint8Array, options: { sha256?: boolean } = {}): Array<Promise<DecodedChunk>> {
    if (frames.length === 0) return [];
    const wantSha256 = options.sha256 === true;
    if (this.#closed) {
      return frames.map((f) => Promise.reject(new DecodeWorkerError(`chunk ${f.index}${f.context}: decode pool is closed`)));
    }
    let specs: FrameSpec[];
    try {
      // Tiny chunks inline; a run is all small or all large but for its last chunk, so decide per run.
      if (frames.every((f) => table.chunkLength(f.index) <= this.inlineMaxChunkBytes)) {
        return this.#inline.decodeFrames(table, frames, bytes, options);
      }
      specs = frames.map((f) => {
        const { start, end } = table.frameRange(f.index);
        const offset = Math.min(Math.max(0, f.offset), bytes.length);
        // A frame reaching past the end of the bytes is cut short here and fails rule 13 in the worker.
        const length = Math.min(f.length ?? end - start, bytes.length - offset);
        return {
          index: f.index,
          offset,
          length,
          frameStart: start,
          frameEnd: end,
          // A copy of its own: a view into a shared slab would send the whole slab to the worker.
          checksum: copyOf(table.checksum(f.index)),
          chunkLength: table.chunkLength(f.index),
          context: f.context,
        };
      });
    } catch (err) {
      return frames.map(() => Promise.reject(err));
    }
    const view = transferableView(bytes);
    const request: DecodeRequest = {
      id: this.#nextId++,
      kind: 'frames',
      ...view,
      frames: specs,
      chunkSize: table.chunkSize,
      sha256: wantSha256,
      // The worker has the only reference (a transferred whole buffer, or our copy): it frees it when done.
      release: true,
    };
    const promises: Array<Promise<DecodedChunk>> = [];
    const parts: PendingJob['parts'] = [];
    for (let k = 0; k < specs.length; k++) {
      promises.push(
        new Promise<PartResult>((resolve, reject) => parts.push({ resolve, reject })).then(({ data, sha256 }) =>
          wantSha256 && sha256 !== undefined ? { data, sha256 } : { data },
        ),
      );
    }
    this.#enqueue({ request, parts, remaining: parts.length, what: `chunk ${specs[0]!.index}${specs[0]!.context}` });
    return promises;
  }

  sha256(bytes: Buffer, from: number): Promise<HashedBytes> {
    if (this.#closed) return Promise.reject(new DecodeWorkerError('sha256: decode pool is closed'));
    if (!(from >= 0 && from <= bytes.length)) return Promise.reject(new RangeError(`sha256 from ${from} outside [0, ${bytes.length}]`));
    // Small inputs, and views into memory shared with others (they cannot be moved), are hashed right here.
    if (bytes.length - from <= this.inlineMaxChunkBytes || !ownsWholeBuffer(bytes)) {
      return this.#inline.sha256(bytes, from);
    }
    const request: DecodeRequest = { id: this.#nextId++, kind: 'sha256', buffer: bytes.buffer as ArrayBuffer, byteOffset: 0, byteLength: bytes.length, from };
    return new Promise<HashedBytes>((resolve, reject) => {
      this.#enqueue({
        request,
        parts: [{ resolve: ({ data, sha256 }) => (sha256 ? resolve({ bytes: data, sha256 }) : reject(new DecodeWorkerError('sha256: no digest in the answer'))), reject }],
        remaining: 1,
        what: 'sha256',
      });
    });
  }

  #enqueue(job: PendingJob): void {
    this.#queue.push(job);
    this.#dispatch();
  }

  #dispatch(): void {
    while (this.#queue.length > 0) {
      let slot = this.#idle.pop();
      if (!slot && this.#slots.length < this.workers) slot = this.#spawn();
      if (!slot) return;
      const job = this.#queue.shift()!;
      slot.job = job;
      slot.worker.ref();
      slot.worker.postMessage(job.request, [job.request.buffer]);
    }
  }

  #spawn(): Slot {
    const worker = new Worker(WORKER_URL);
    const slot: Slot = { worker, job: undefined };
    worker.on('message', (response: DecodeResponse) => {
      const job = slot.job;
      if (!job || job.request.id !== response.id) return;
      const part = job.parts[response.part];
      if (!part) return;
      if (response.ok) part.resolve({ data: Buffer.from(response.buffer, response.byteOffset, response.byteLength), sha256: response.sha256 });
      else part.reject(deserializeError(response.error));
      if (--job.remaining > 0) return;
      slot.job = undefined;
      this.#workerJobs += job.request.kind === 'frames' ? job.parts.length : 1;
      if (this.#closed) return;
      worker.unref();
      this.#idle.push(slot);
      this.#dispatch();
    });
    const fail = (reason: string): void => {
      this.#forget(slot);
      const job = slot.job;
      slot.job = undefined;
      if (job) rejectJob(job, new DecodeWorkerError(`${job.what}: decode worker ${reason}`));
      if (!this.#closed) this.#dispatch();
    };
    worker.on('error', (err: Error) => fail(`failed: ${err.message}`));
    worker.on('exit', (code: number) => fail(`exited with code ${code}`));
    this.#slots.push(slot);
    return slot;
  }

  #forget(slot: Slot): void {
    const at = this.#slots.indexOf(slot);
    if (at >= 0) this.#slots.splice(at, 1);
    const idleAt = this.#idle.indexOf(slot);
    if (idleAt >= 0) this.#idle.splice(idleAt, 1);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const job of this.#queue.splice(0)) rejectJob(job, new DecodeWorkerError(`${job.what}: decode pool closed`));
    const slots = this.#slots.splice(0);
    this.#idle.length = 0;
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }
}

let shared: DecodePool | undefined;

/**
 * The process-wide decode pool (created on first use, default options). Its idle workers do not keep the
 * process alive.
 */
export function sharedDecodePool(): DecodePool {
  shared ??= new DecodePool();
  return shared;
}

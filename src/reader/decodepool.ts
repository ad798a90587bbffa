// Frame verification and decompression off the main thread: a small pool of worker threads (each with its own
// zstd context) that hashes (SHA-512) and decodes chunk frames, so the event loop that also serves FUSE stays
// responsive. Frames travel by transfer when they own their ArrayBuffer (else one copy), decoded chunks come
// back by transfer. Errors keep their class across the thread boundary. Tiny chunks are decoded inline, where
// a round trip to a worker would cost more than the work. Also the inline decoder with the same interface.
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { decodeFrame } from '../chunktable/frame.js';
import type { ChunkTable } from '../chunktable/table.js';
import { deserializeError, transferableView } from './decodeprotocol.js';
import type { DecodeRequest, DecodeResponse } from './decodeprotocol.js';

/** Upper bound on decode workers; the pool uses min(cores, this) unless told otherwise. */
export const DEFAULT_MAX_DECODE_WORKERS = 4;
/**
 * Chunks of at most this many decoded bytes are decoded inline: hashing and decoding 64 KiB takes well under a
 * millisecond, about what posting it to a worker and back costs.
 */
export const DEFAULT_INLINE_MAX_CHUNK_BYTES = 64 * 1024;

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

interface PendingJob {
  request: DecodeRequest;
  resolve: (data: Buffer) => void;
  reject: (err: unknown) => void;
}

interface Slot {
  worker: Worker;
  job: PendingJob | undefined;
}

const WORKER_URL = new URL('./decodeworker.js', import.meta.url);

export function defaultDecodeWorkers(): number {
  return Math.max(1, Math.min(availableParallelism(), DEFAULT_MAX_DECODE_WORKERS));
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
  /** Jobs completed by workers (not inline), for tests and stats. */
  #workerJobs = 0;

  constructor(options: DecodePoolOptions = {}) {
    this.workers = options.workers ?? defaultDecodeWorkers();
    this.inlineMaxChunkBytes = options.inlineMaxChunkBytes ?? DEFAULT_INLINE_MAX_CHUNK_BYTES;
    if (!Number.isInteger(this.workers) || this.workers < 1) throw new RangeError(`decode workers ${this.workers} must be an integer >= 1`);
    if (!(this.inlineMaxChunkBytes >= 0)) throw new RangeError(`inlineMaxChunkBytes ${this.inlineMaxChunkBytes} must be >= 0`);
  }

  /** Frames decoded by worker threads so far. */
  get workerJobs(): number {
    return this.#workerJobs;
  }

  /** Worker threads currently running. */
  get threads(): number {
    return this.#slots.length;
  }

  decode(table: ChunkTable, index: number, frame: Uint8Array, context: string): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new DecodeWorkerError(`chunk ${index}${context}: decode pool is closed`));
    let chunkLength: number;
    let frameStart: number;
    let frameEnd: number;
    let checksum: Uint8Array | undefined;
    try {
      chunkLength = table.chunkLength(index);
      if (chunkLength <= this.inlineMaxChunkBytes) return this.#inline.decode(table, index, frame, context);
      ({ start: frameStart, end: frameEnd } = table.frameRange(index));
      checksum = table.checksum(index);
    } catch (err) {
      return Promise.reject(err);
    }
    const view = transferableView(frame);
    const request: DecodeRequest = {
      id: this.#nextId++,
      ...view,
      index,
      frameStart,
      frameEnd,
      checksum,
      chunkLength,
      chunkSize: table.chunkSize,
      context,
    };
    return new Promise<Buffer>((resolve, reject) => {
      this.#queue.push({ request, resolve, reject });
      this.#dispatch();
    });
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
      slot.job = undefined;
      this.#workerJobs++;
      if (response.ok) job.resolve(Buffer.from(response.buffer, response.byteOffset, response.byteLength));
      else job.reject(deserializeError(response.error));
      if (this.#closed) return;
      worker.unref();
      this.#idle.push(slot);
      this.#dispatch();
    });
    const fail = (reason: string): void => {
      this.#forget(slot);
      const job = slot.job;
      slot.job = undefined;
      if (job) job.reject(new DecodeWorkerError(`chunk ${job.request.index}${job.request.context}: decode worker ${reason}`));
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
    for (const job of this.#queue.splice(0)) job.reject(new DecodeWorkerError(`chunk ${job.request.index}${job.request.context}: decode pool closed`));
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

// What crosses the thread boundary of the decode pool: jobs (the frames of one fetched run, in one buffer, with
// the chunk table facts needed to verify each; or bytes to hash with SHA-256), the answers (one per frame, or
// the hashed bytes handed back), and errors flattened to plain data and rebuilt on the other side as the same
// classes (IntegrityError stays distinct from SeekableFormatError). Also the frame decode itself, the same
// order of checks as the chunktable's FrameDecoder.decode (rules 13, 14, then 15–17), and the helpers that
// move memory between threads without copying it.
import { createHash } from 'node:crypto';
import { MessageChannel } from 'node:worker_threads';
import type { MessagePort } from 'node:worker_threads';
import { SeekableFormatError } from '../chunktable/errors.js';
import type { FrameDecoder } from '../chunktable/frame.js';
import { IntegrityError, verifyFrameDigest } from '../verity/digests.js';

/** One frame to verify and decode. */
export interface FrameJob {
  /** Chunk index i. */
  index: number;
  /** The compressed frame `blob[Start_i, End_i)`. */
  frame: Uint8Array;
  /** `[Start_i, End_i)` from the chunk table. */
  frameStart: number;
  frameEnd: number;
  /** entry[i].Checksum (64 bytes), or undefined for a HashAlgo 0 table (refused: rule 19). */
  checksum: Uint8Array | undefined;
  /** `size_i`. */
  chunkLength: number;
  /** `C`. */
  chunkSize: number;
  /** Appended to error messages, e.g. " (layer sha256:…, blob range [a, b))". */
  context: string;
}

/** One frame of a frames request: where it lies in the request's bytes, and what the chunk table says of it. */
export interface FrameSpec {
  index: number;
  /** Offset of the frame from the request's byteOffset. */
  offset: number;
  /** Bytes of the frame in the request (checked against frameEnd − frameStart: rule 13). */
  length: number;
  frameStart: number;
  frameEnd: number;
  checksum: Uint8Array | undefined;
  chunkLength: number;
  context: string;
}

/**
 * Main thread → worker. The bytes travel as an ArrayBuffer (transferred) plus view bounds.
 * `frames`: verify and decode each frame (one answer per frame, in order), with the SHA-256 of each decoded
 * chunk when `sha256` is set; when `release` is set the worker frees the bytes once done (they were transferred
 * to it, nobody else holds them). `sha256`: hash bytes [byteOffset + from, byteOffset + byteLength) and hand the
 * whole buffer back in the answer.
 */
export type DecodeRequest =
  | {
      id: number;
      kind: 'frames';
      buffer: ArrayBuffer;
      byteOffset: number;
      byteLength: number;
      frames: FrameSpec[];
      chunkSize: number;
      sha256: boolean;
      release: boolean;
    }
  | { id: number; kind: 'sha256'; buffer: ArrayBuffer; byteOffset: number; byteLength: number; from: number };

/** An error reduced to structured-clone-safe data. */
export type SerializedError =
  | { kind: 'integrity'; message: string; stack?: string; subject: 'chunk-table' | 'frame'; chunkIndex?: number }
  | { kind: 'format'; message: string; stack?: string; rule: number }
  | { kind: 'range'; message: string; stack?: string }
  | { kind: 'other'; message: string; stack?: string; name: string };

/**
 * Worker → main thread: answer `part` of request `id` (the part-th frame; 0 for a hash request). On success the
 * ArrayBuffer is transferred: the decoded chunk, or for a hash request the request's own bytes handed back.
 * `sha256` is the digest of the decoded chunk (frames with sha256 set) or of the hashed bytes.
 */
export type DecodeResponse =
  | { id: number; part: number; ok: true; buffer: ArrayBuffer; byteOffset: number; byteLength: number; sha256?: Uint8Array }
  | { id: number; part: number; ok: false; error: SerializedError };

export function serializeError(err: unknown): SerializedError {
  if (err instanceof IntegrityError) {
    const out: SerializedError = { kind: 'integrity', message: err.message, subject: err.subject };
    if (err.stack !== undefined) out.stack = err.stack;
    if (err.chunkIndex !== undefined) out.chunkIndex = err.chunkIndex;
    return out;
  }
  if (err instanceof SeekableFormatError) return withStack({ kind: 'format', message: err.message, rule: err.rule }, err);
  if (err instanceof RangeError) return withStack({ kind: 'range', message: err.message }, err);
  if (err instanceof Error) return withStack({ kind: 'other', message: err.message, name: err.name }, err);
  return { kind: 'other', message: String(err), name: 'Error' };
}

function withStack<T extends SerializedError>(out: T, err: Error): T {
  if (err.stack !== undefined) out.stack = err.stack;
  return out;
}

/** Rebuilds the error class (and message) that `serializeError` flattened. */
export function deserializeError(data: SerializedError): Error {
  let err: Error;
  switch (data.kind) {
    case 'integrity':
      err = new IntegrityError(data.message, data.subject, data.chunkIndex);
      break;
    case 'format': {
      // The constructor prefixes the rule area; the message already carries it, so set it verbatim.
      const formatError = new SeekableFormatError(data.rule, '');
      formatError.message = data.message;
      err = formatError;
      break;
    }
    case 'range':
      err = new RangeError(data.message);
      break;
    case 'other':
      err = new Error(data.message);
      err.name = data.name;
      break;
  }
  if (data.stack !== undefined) err.stack = `${data.stack}\n    (in a decode worker thread)`;
  return err;
}

/**
 * Verifies and decodes one frame: frame length against the table (rule 13), SHA-512 against the entry
 * (rule 14, IntegrityError) before any parsing, then exactly one bounded zstd frame decoded to exactly
 * `size_i` bytes (rules 15–17, via FrameDecoder.decodeChecked).
 */
export function decodeFrameJob(job: FrameJob, decoder: FrameDecoder): Buffer {
  const what = `chunk ${job.index}${job.context}`;
  const want = job.frameEnd - job.frameStart;
  if (job.frame.length !== want) {
    throw new SeekableFormatError(13, `${what}: got ${job.frame.length} frame bytes, table bounds [${job.frameStart}, ${job.frameEnd}) give ${want}`);
  }
  if (job.checksum === undefined) {
    throw new SeekableFormatError(19, `${what}: chunk table has HashAlgo 0, frames cannot be verified; use the sequential path`);
  }
  verifyFrameDigest(job.frame, job.checksum, job.index, job.context);
  return decoder.decodeChecked(job.frame, job.chunkLength, job.chunkSize, what);
}

/** SHA-256 of bytes, as a fresh 32-byte Uint8Array (safe to send to another thread). */
export function sha256Of(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(createHash('sha256').update(bytes).digest());
}

/** The frame of `spec` inside a request's bytes (a view; bounds already checked by the sender). */
export function frameJobOf(bytes: Uint8Array, spec: FrameSpec, chunkSize: number): FrameJob {
  return {
    index: spec.index,
    frame: bytes.subarray(spec.offset, spec.offset + spec.length),
    frameStart: spec.frameStart,
    frameEnd: spec.frameEnd,
    checksum: spec.checksum,
    chunkLength: spec.chunkLength,
    chunkSize,
    context: spec.context,
  };
}

let releasePort: MessagePort | undefined;

/**
 * Frees an ArrayBuffer's memory now instead of at this thread's next garbage collection, by transferring it
 * to a port whose other end is closed (the message, and the memory with it, is dropped at once). Views of it
 * become empty: only for memory nobody else can still be reading. A worker that received a 4 MiB frame would
 * otherwise keep it, and dozens like it, until its nearly idle heap happens to collect.
 */
export function releaseArrayBuffer(buffer: ArrayBuffer): void {
  if (buffer.byteLength === 0) return;
  if (!releasePort) {
    const channel = new MessageChannel();
    channel.port2.close();
    releasePort = channel.port1;
    releasePort.unref();
  }
  try {
    releasePort.postMessage(null, [buffer]);
  } catch {
    // Not transferable (e.g. already detached): the garbage collector frees it as usual.
  }
}

/** True when `bytes` is the whole of a plain ArrayBuffer, so its memory can be transferred as is. */
export function ownsWholeBuffer(bytes: Uint8Array): boolean {
  return bytes.buffer instanceof ArrayBuffer && bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength;
}

/** The bytes as a transferable ArrayBuffer view: the same memory when it owns its buffer, else a copy. */
export function transferableView(bytes: Uint8Array): { buffer: ArrayBuffer; byteOffset: number; byteLength: number } {
  if (ownsWholeBuffer(bytes)) return { buffer: bytes.buffer as ArrayBuffer, byteOffset: 0, byteLength: bytes.byteLength };
  const copy = new ArrayBuffer(bytes.byteLength);
  new Uint8Array(copy).set(bytes);
  return { buffer: copy, byteOffset: 0, byteLength: bytes.byteLength };
}

// What crosses the thread boundary of the decode pool: a frame job (the frame bytes plus the chunk table
// facts needed to verify them), the answer, and errors flattened to plain data and rebuilt on the other side
// as the same classes (IntegrityError stays distinct from SeekableFormatError). Also the job's decode
// itself, the same order of checks as the chunktable's FrameDecoder.decode (rules 13, 14, then 15–17).
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

/** Main thread → worker. The frame travels as an ArrayBuffer (transferred) plus its view bounds. */
export interface DecodeRequest {
  id: number;
  buffer: ArrayBuffer;
  byteOffset: number;
  byteLength: number;
  index: number;
  frameStart: number;
  frameEnd: number;
  checksum: Uint8Array | undefined;
  chunkLength: number;
  chunkSize: number;
  context: string;
}

/** An error reduced to structured-clone-safe data. */
export type SerializedError =
  | { kind: 'integrity'; message: string; stack?: string; subject: 'chunk-table' | 'frame'; chunkIndex?: number }
  | { kind: 'format'; message: string; stack?: string; rule: number }
  | { kind: 'range'; message: string; stack?: string }
  | { kind: 'other'; message: string; stack?: string; name: string };

/** Worker → main thread. On success the decoded chunk's ArrayBuffer is transferred. */
export type DecodeResponse =
  | { id: number; ok: true; buffer: ArrayBuffer; byteOffset: number; byteLength: number }
  | { id: number; ok: false; error: SerializedError };

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

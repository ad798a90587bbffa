// Public API of src/chunktable: the seekable EROFS layer blob format (annotations, chunk table, range
// mapping, verified frame decoding, streaming encoder and whole-blob decoders). See errors.ts for the
// error policy.
export { SeekableFormatError, isSeekableReadError, FIRST_RULE, LAST_RULE } from './errors.js';
export { IntegrityError } from '../verity/digests.js';
export {
  SEEKABLE_EROFS_MEDIA_TYPE,
  ANNOTATION_CHUNK_TABLE_OFFSET,
  ANNOTATION_CHUNK_DIGEST,
  ANNOTATION_DMVERITY_OFFSET,
  ANNOTATION_DMVERITY_ROOT_DIGEST,
  SEEKABLE_ANNOTATION_KEYS,
  MAX_ANNOTATION_OFFSET,
  isSeekableErofsMediaType,
  parseOffsetAnnotation,
  parseSeekableAnnotations,
  formatSeekableAnnotations,
  buildSeekableDescriptor,
  sortKeys,
} from './annotations.js';
export type { SeekableLayout, SequentialVerdict, UnsupportedVerdict, SeekableVerdict, SeekableAnnotationValues } from './annotations.js';
export {
  SKIPPABLE_MAGIC_FIRST,
  SKIPPABLE_MAGIC_LAST,
  WRITER_SKIPPABLE_MAGIC,
  SKIPPABLE_HEADER_SIZE,
  MAX_SKIPPABLE_PAYLOAD,
  CHUNK_TABLE_MAGIC,
  CHUNK_TABLE_VERSION,
  CHUNK_TABLE_HEADER_SIZE,
  HASH_ALGO_NONE,
  HASH_ALGO_SHA512,
  SHA512_SIZE,
  MAX_CHUNK_SIZE,
  MAX_CHUNK_COUNT,
  MAX_FRAME_SLACK,
  DEFAULT_MAX_CHUNK_TABLE_BYTES,
  ChunkTable,
  chunkCountFor,
  expectedChunkTableLength,
  hashSizeOf,
  maxFrameLength,
  parseSkippableHeader,
  encodeSkippableFrame,
  parseChunkTable,
  loadChunkTable,
  serializeChunkTable,
  serializeChunkTableFrame,
} from './table.js';
export type {
  HashAlgo,
  SkippableHeader,
  ChunkTablePlacement,
  ByteRange,
  ChunkGeometry,
  ReadRange,
  LoadChunkTableOptions,
  ChunkTableEntry,
  ChunkTableFields,
} from './table.js';
export {
  DEFAULT_PAST_END_POLICY,
  DEFAULT_MAX_GAP_BYTES,
  DEFAULT_MAX_REQUEST_BYTES,
  mapImageRange,
  groupFrameRuns,
  frameFromRun,
} from './range.js';
export type { PastEndPolicy, ChunkSlice, FrameRun, GroupRunsOptions } from './range.js';
export {
  ZSTD_FRAME_MAGIC,
  MIN_WINDOW_LIMIT,
  FrameDecoder,
  decodeFrame,
  sharedFrameDecoder,
  parseZstdFrameHeader,
  checkFrameHeader,
  windowLimitFor,
} from './frame.js';
export type { ZstdFrameHeader, DecodeFrameOptions } from './frame.js';
export {
  DEFAULT_CHUNK_SIZE,
  DEFAULT_COMPRESSION_LEVEL,
  encodeSeekableBlob,
  seekableLayerDescriptor,
} from './encoder.js';
export type { EncodeOptions, EncodeVerityOptions, EncodeResult } from './encoder.js';
export {
  DEFAULT_STREAM_WINDOW_LOG_MAX,
  decodeSeekableBlob,
  decodeSequential,
  decodeLayerBlob,
} from './decoder.js';
export type { DecodeResult, DecodeSequentialOptions, DecodeSeekableOptions } from './decoder.js';
export type { ByteSource, ByteSink } from './io.js';

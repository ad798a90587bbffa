// Public API of src/erofs: a read-only, user-space reader of EROFS images as mkfs.erofs writes them (flat,
// inline, chunk-based and lz4-compressed data; every inode kind; xattrs), over any random-access byte source
// such as a lazily fetched layer, and a layered view of several images with overlay whiteout semantics.
export { ErofsError, ErofsFormatError, ErofsPathError, ErofsUnsupportedError, isErofsError } from './errors.js';
export type { ErofsPathCode, ErofsStructure } from './errors.js';
export { BlockReader, bufferSource, DEFAULT_BLOCK_CACHE_BYTES, fileSource } from './source.js';
export type { BlockReaderOptions, ErofsSource, FileSource } from './source.js';
export { EROFS_SUPER_MAGIC, EROFS_SUPER_OFFSET, parseSuperblock } from './superblock.js';
export type { Superblock } from './superblock.js';
export { DATA_LAYOUT, DATA_LAYOUT_NAMES, decodeDevice, fileTypeOfMode } from './inode.js';
export type { DataLayoutName, DeviceNumber, ErofsInode, FileType } from './inode.js';
export { DEFAULT_EXTENT_CACHE_BYTES } from './data.js';
export type { DataExtent, ExtentKind } from './data.js';
export type { DirEntry } from './dir.js';
export { XATTR_PREFIXES } from './xattr.js';
export type { Xattr } from './xattr.js';
export { lz4DecompressBlock } from './lz4.js';
export { DEFAULT_INODE_CACHE_ENTRIES, DEFAULT_STREAM_CHUNK_BYTES, ErofsImage, isDotEntry, MAX_SYMLINK_BYTES } from './image.js';
export type { ErofsImageOptions } from './image.js';
export { MAX_PATH_BYTES, MAX_SYMLINK_HOPS, resolvePath } from './path.js';
export type { PathView, ResolveOptions } from './path.js';
export {
  displayName,
  isOverlayWhiteout,
  LayeredView,
  MAX_WALK_DEPTH,
  OPAQUE_MARKER,
  OVERLAY_OPAQUE_XATTR,
  WHITEOUT_PREFIX,
} from './layered.js';
export type { LayerDir, LayeredViewOptions, ViewEntry, ViewNode } from './layered.js';
export { chunksOfRanges, DEFAULT_PREFETCH_MAX_ENTRIES, inodeRanges, mergeRanges, pathRanges } from './prefetch.js';
export type { ImageRange, InodeRange, PathRangesResult } from './prefetch.js';

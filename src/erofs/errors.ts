// Typed errors of the user-space EROFS reader. Every problem found in image bytes is an ErofsFormatError naming
// the on-disk structure and the image offset where it was found; a valid image using a feature this reader does
// not implement is an ErofsUnsupportedError; a path that does not resolve is an ErofsPathError. All three share
// ErofsError, so a caller (and the fuzz test) can tell "the image or the path is bad" from everything else.
// Errors of the byte source (network, disk, verification) pass through unchanged: they are not the image's fault.

/** Base class of every error the reader raises on its own. */
export class ErofsError extends Error {
  override name = 'ErofsError';
}

/** On-disk structures named in format errors. */
export type ErofsStructure =
  | 'superblock'
  | 'inode'
  | 'xattr'
  | 'shared-xattr'
  | 'directory'
  | 'dirent'
  | 'symlink'
  | 'data'
  | 'inline-data'
  | 'chunk-index'
  | 'z-map-header'
  | 'z-index'
  | 'pcluster'
  | 'lz4'
  | 'image';

/** Malformed image bytes: the structure, the image offset it sits at, and what is wrong with it. */
export class ErofsFormatError extends ErofsError {
  override name = 'ErofsFormatError';
  constructor(
    readonly structure: ErofsStructure,
    readonly offset: number,
    detail: string,
  ) {
    super(`EROFS ${structure} at offset ${offset}: ${detail}`);
  }
}

/** A well-formed image that uses something this reader does not implement (LZMA, extra devices, fragments...). */
export class ErofsUnsupportedError extends ErofsError {
  override name = 'ErofsUnsupportedError';
  constructor(
    readonly feature: string,
    readonly offset: number,
    detail: string,
  ) {
    super(`EROFS feature not supported (${feature}) at offset ${offset}: ${detail}`);
  }
}

/** Why a path did not resolve, with the errno name a file system would give. */
export type ErofsPathCode = 'ENOENT' | 'ENOTDIR' | 'ELOOP' | 'EISDIR' | 'ENAMETOOLONG' | 'EINVAL';

export class ErofsPathError extends ErofsError {
  override name = 'ErofsPathError';
  constructor(
    readonly code: ErofsPathCode,
    readonly path: string,
    detail: string,
  ) {
    super(`${path}: ${detail} (${code})`);
  }
}

/** True for the errors the reader raises because of image bytes or a path (not I/O failures of the source). */
export function isErofsError(err: unknown): err is ErofsError {
  return err instanceof ErofsError;
}

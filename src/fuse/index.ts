// Public surface of src/fuse: the FUSE filesystem that presents layer files to the kernel, and the
// unmount helpers cleanup code uses.
export { LayerFilesystem } from './filesystem.js';
export type { LayerFilesystemOptions, LayerFilesystemStats } from './filesystem.js';
export { forceUnmountFuse, FuseBusyError, isMountpoint as isFuseMountpoint, unmountFuse } from './unmount.js';
export type { UnmountOptions } from './unmount.js';
export { formatFuseOptions } from './native.js';

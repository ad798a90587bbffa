// The defaults that the command definitions show in --help, for the CLI's start-up path. Their home modules
// (the reader, the mount server, the snapshotter, the registry client, containerd's gRPC client, the chunk
// encoder) load undici, gRPC, protobuf or native addons when imported, which would make every invocation pay
// for all of them; the definitions read these copies instead, and test/unit/cli-startup.test.ts checks that
// each copy equals the value its home module exports (named there after each constant).

/** fetch/hosts.ts DEFAULT_HOSTS_DIR */
export const DEFAULT_HOSTS_DIR = '/etc/containerd/certs.d';
/** cache/disk.ts DEFAULT_CACHE_DIR */
export const DEFAULT_CACHE_DIR = '/var/lib/erofs-lazy';
/** cache/disk.ts DEFAULT_DISK_CACHE_MAX_BYTES */
export const DEFAULT_DISK_CACHE_MAX_BYTES = 10 * 1024 * 1024 * 1024;
/** cache/memory.ts DEFAULT_MEMORY_CACHE_BYTES */
export const DEFAULT_MEMORY_CACHE_BYTES = 128 * 1024 * 1024;
/** prefetch/background.ts DEFAULT_BACKGROUND_BYTES_PER_SECOND */
export const DEFAULT_BACKGROUND_BYTES_PER_SECOND = 32 * 1024 * 1024;
/** reader/index.ts DEFAULT_MAX_GAP_BYTES */
export const DEFAULT_MAX_GAP_BYTES = 128 * 1024;
/** reader/index.ts DEFAULT_READ_DEADLINE_MS */
export const DEFAULT_READ_DEADLINE_MS = 30_000;
/** mount/server.ts DEFAULT_MOUNT_TIMEOUT_MS */
export const DEFAULT_MOUNT_TIMEOUT_MS = 30_000;
/** mount/state.ts DEFAULT_STATE_DIR */
export const DEFAULT_STATE_DIR = '/run/erofs-lazy';
/** snapshotter/server.ts DEFAULT_SNAPSHOTTER_ROOT */
export const DEFAULT_SNAPSHOTTER_ROOT = '/var/lib/erofs-lazy/snapshotter';
/** snapshotter/fusemanager.ts FUSE_MANAGER_COMMAND (the hidden command serve starts its FUSE manager with) */
export const FUSE_MANAGER_COMMAND = 'serve-fuse-manager';
/** containerd/index.ts DEFAULT_NAMESPACE */
export const DEFAULT_NAMESPACE = 'default';
/** containerd/index.ts DEFAULT_SNAPSHOTTER */
export const DEFAULT_SNAPSHOTTER = 'erofs-lazy';
/** chunktable/index.ts DEFAULT_CHUNK_SIZE */
export const DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024;
/** verity/dmverity.ts DEFAULT_VERITY_BLOCK_SIZE */
export const DEFAULT_VERITY_BLOCK_SIZE = 4096;
/** fetch/reference.ts DOCKER_HUB_REGISTRY */
export const DOCKER_HUB_REGISTRY = 'docker.io';

// containerd client side of erofs-lazy: the gRPC client (content, images, leases, snapshots, diff), the
// label vocabulary shared with remote snapshotters, and rpull.
export * from './client.js';
export * from './errors.js';
export * from './labels.js';
export * from './rpull.js';
export type * from './types.js';

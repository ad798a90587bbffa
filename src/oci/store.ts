// The blob interface that every image location implements: a registry repository (src/fetch/registry)
// and an OCI image layout directory (src/fetch/ocilayout). Convert, inspect and mount speak only this.
import type { Readable } from 'node:stream';
import type { Descriptor, Platform, ResolvedImage } from './types.js';

export interface ResolveOptions {
  /** Platform to pick from an image index; defaults to the host's linux platform. */
  platform?: Platform;
}

/** Bytes [start, end) of a blob. */
export interface ByteRange {
  start: number;
  end: number;
}

export type BlobContent = { path: string } | { bytes: Buffer } | { stream: () => Promise<Readable> };

export interface ImageStore {
  /** Where this store points, for messages; never contains credentials. */
  readonly displayName: string;
  /** For a registry store, "host/repository" (used for cross-repository mounts); undefined for a layout. */
  readonly registryRepository?: string;

  /** Resolves the store's reference (tag or digest) to one image manifest, through an index if needed. */
  resolve(options?: ResolveOptions): Promise<ResolvedImage>;

  /** Reads a whole blob into memory, verifying its digest and size. For manifests, configs, small blobs. */
  fetchBlob(desc: Descriptor): Promise<Buffer>;

  /**
   * Streams a whole blob; the stream errors (instead of ending) if the digest or size does not match. An
   * aborted `signal` ends it with the signal's reason.
   */
  openBlob(desc: Descriptor, options?: { signal?: AbortSignal }): Promise<Readable>;

  /**
   * Reads blob bytes [start, end) exactly; fails if the store returns anything else. An aborted `signal`
   * ends the read at once (freeing its connection) and rejects with the signal's reason.
   */
  fetchRange(desc: Descriptor, start: number, end: number, options?: { signal?: AbortSignal }): Promise<Buffer>;

  /**
   * Reads several sorted, disjoint ranges of a blob, in one request where the store can (a registry's
   * multi-range request); same guarantees as fetchRange for each. Optional: without it, one fetchRange each.
   */
  fetchRanges?(desc: Descriptor, ranges: readonly ByteRange[], options?: { signal?: AbortSignal }): Promise<Buffer[]>;
  /** False once the store found that multi-range requests are refused (fetchRanges then asks range by range). */
  readonly multiRangeEnabled?: boolean;

  /** Whether the blob already exists at the destination (so a push can skip it). */
  hasBlob(desc: Descriptor): Promise<boolean>;

  /**
   * Uploads a blob from a file or a stream (chunked when large) or from memory; a no-op if it already
   * exists. The store verifies digest and size of what it sent. With `crossMountFrom` (a repository on the
   * same registry host holding the blob), a registry first tries a cross-repository mount.
   */
  pushBlob(desc: Descriptor, content: BlobContent, options?: { crossMountFrom?: string }): Promise<void>;

  /**
   * Stores a manifest (or index) under `options.tag`, else the store's tag, or by digest only when there is
   * none or `options.untagged` is set.
   */
  pushManifest(mediaType: string, bytes: Buffer, options?: { tag?: string; untagged?: boolean }): Promise<Descriptor>;

  /**
   * Reads the manifest or index a tag (or digest) names in the store's repository, as stored; undefined when
   * there is none. Digest-named manifests are verified; a tag's bytes are what the registry serves for it.
   */
  fetchManifest?(target: string): Promise<{ descriptor: Descriptor; bytes: Buffer } | undefined>;

  /** Releases connections. */
  close(): Promise<void>;
}

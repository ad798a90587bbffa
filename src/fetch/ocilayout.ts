// ImageStore for an OCI image layout directory (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`): resolves a
// tag through the ref.name annotation and nested indexes, reads blobs and ranges with verification, and
// writes blobs and index.json atomically (temp file + rename), creating the layout on first push.
import { randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve as resolvePath } from 'node:path';
import { pipeline as pipelineCallback, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { BlobContent, ImageStore, ResolveOptions } from '../oci/store.js';
import { MEDIA_TYPE, type Descriptor, type ImageIndex, type Platform, type ResolvedImage } from '../oci/types.js';
import { parseDigest, sha256Digest } from '../util/digest.js';
import { ContentVerificationError, OciLayoutError } from './errors.js';
import { MAX_MANIFEST_BYTES, resolveThroughIndexes } from './manifest.js';
import { hostPlatform, selectManifest } from './platform.js';
import { DEFAULT_TAG, parseOciLayoutReference, type OciLayoutReference } from './reference.js';
import { checkDescriptor, checkRange, verifyContent, VerifyingStream } from './verify.js';

/** Version written to and expected in the `oci-layout` file. */
export const OCI_LAYOUT_VERSION = '1.0.0';
/** Annotation of index.json entries that carries the tag. */
export const REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name';
/** Largest blob fetchBlob reads into memory; larger ones must be streamed with openBlob. */
export const MAX_LAYOUT_FETCH_BLOB_BYTES = 256 * 1024 * 1024;
const LAYOUT_FILE = 'oci-layout';
const INDEX_FILE = 'index.json';
const BLOBS_DIR = 'blobs';

export interface OciLayoutStoreOptions {
  /** Platform resolve() picks from an index when its options give none; default the host's. */
  platform?: Platform;
  /** Override of MAX_LAYOUT_FETCH_BLOB_BYTES. */
  maxFetchBlobBytes?: number;
}

/** index.json updates of one directory run one after another within this process. */
const indexLocks = new Map<string, Promise<unknown>>();

async function withIndexLock<T>(dir: string, work: () => Promise<T>): Promise<T> {
  const previous = indexLocks.get(dir) ?? Promise.resolve();
  const next = previous.then(work, work);
  const settled = next.catch(() => undefined);
  indexLocks.set(dir, settled);
  try {
    return await next;
  } finally {
    if (indexLocks.get(dir) === settled) indexLocks.delete(dir);
  }
}

function isMissing(err: unknown): boolean {
  return (err as NodeJS.ErrnoException | undefined)?.code === 'ENOENT';
}

/** Writes `data` to `path` through a temp file in the same directory and a rename. */
async function writeAtomically(path: string, data: Buffer | string): Promise<void> {
  const temp = join(dirname(path), `.tmp-${randomUUID()}`);
  try {
    await writeFile(temp, data, { flag: 'wx' });
    await rename(temp, path);
  } catch (err) {
    await rm(temp, { force: true });
    throw err;
  }
}

export class OciLayoutStore implements ImageStore {
  readonly reference: OciLayoutReference;
  readonly displayName: string;
  readonly registryRepository: undefined = undefined;
  private readonly dir: string;
  private readonly platform: Platform;
  private readonly fetchBlobMax: number;

  constructor(reference: OciLayoutReference | string, options: OciLayoutStoreOptions = {}) {
    this.reference = typeof reference === 'string' ? parseOciLayoutReference(reference) : reference;
    this.displayName = this.reference.toString();
    this.dir = resolvePath(this.reference.dir);
    this.platform = options.platform ?? hostPlatform();
    this.fetchBlobMax = options.maxFetchBlobBytes ?? MAX_LAYOUT_FETCH_BLOB_BYTES;
  }

  private blobPath(digest: string): string {
    const { algorithm, hex } = parseDigest(digest);
    return join(this.dir, BLOBS_DIR, algorithm, hex);
  }

  private async readIndex(): Promise<ImageIndex> {
    let layoutText: string;
    try {
      layoutText = await readFile(join(this.dir, LAYOUT_FILE), 'utf8');
    } catch (err) {
      if (isMissing(err)) throw new OciLayoutError(`${this.displayName}: not an OCI image layout (no ${LAYOUT_FILE} in ${this.dir})`);
      throw err;
    }
    let version: unknown;
    try {
      version = (JSON.parse(layoutText) as { imageLayoutVersion?: unknown }).imageLayoutVersion;
    } catch {
      throw new OciLayoutError(`${this.displayName}: ${LAYOUT_FILE} is not valid JSON`);
    }
    if (version !== OCI_LAYOUT_VERSION) throw new OciLayoutError(`${this.displayName}: unsupported imageLayoutVersion ${JSON.stringify(version)}`);
    let index: unknown;
    try {
      index = JSON.parse(await readFile(join(this.dir, INDEX_FILE), 'utf8'));
    } catch (err) {
      if (isMissing(err)) throw new OciLayoutError(`${this.displayName}: layout has no ${INDEX_FILE}`);
      if (err instanceof SyntaxError) throw new OciLayoutError(`${this.displayName}: ${INDEX_FILE} is not valid JSON`);
      throw err;
    }
    const manifests = (index as { manifests?: unknown } | null)?.manifests;
    if (!Array.isArray(manifests)) throw new OciLayoutError(`${this.displayName}: ${INDEX_FILE} has no manifests list`);
    return index as ImageIndex;
  }

  /** Creates the directory, `oci-layout` and an empty `index.json` where missing. */
  private async ensureLayout(): Promise<void> {
    await mkdir(join(this.dir, BLOBS_DIR), { recursive: true });
    const layoutPath = join(this.dir, LAYOUT_FILE);
    try {
      await writeFile(layoutPath, JSON.stringify({ imageLayoutVersion: OCI_LAYOUT_VERSION }), { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    try {
      const empty: ImageIndex = { schemaVersion: 2, mediaType: MEDIA_TYPE.ociIndex, manifests: [] };
      await writeFile(join(this.dir, INDEX_FILE), JSON.stringify(empty), { flag: 'wx' });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
  }

  /** Reads a blob whole after checking its size on disk; verifies the digest. */
  private async readVerified(desc: Descriptor, limit: number, operation: string): Promise<Buffer> {
    checkDescriptor(desc);
    if (desc.size > limit) throw new RangeError(`${this.displayName}: blob ${desc.digest} has ${desc.size} bytes, more than ${operation} reads (${limit})`);
    const path = this.blobPath(desc.digest);
    let bytes: Buffer;
    try {
      const info = await stat(path);
      if (info.size !== desc.size) {
        throw new ContentVerificationError(`${operation} ${this.displayName}: ${desc.digest} has ${info.size} bytes on disk, descriptor says ${desc.size}`, desc.digest, 'size');
      }
      bytes = await readFile(path);
    } catch (err) {
      if (isMissing(err)) throw new OciLayoutError(`${this.displayName}: blob ${desc.digest} is not in the layout`);
      throw err;
    }
    verifyContent(desc, bytes, `${operation} ${this.displayName}`);
    return bytes;
  }

  /** The index.json entries the reference names, before platform selection. */
  private async candidates(index: ImageIndex): Promise<Descriptor[]> {
    const { tag, digest } = this.reference;
    if (digest !== undefined) {
      const listed = index.manifests.filter((entry) => entry.digest === digest);
      if (listed.length > 0) return [listed[0]!];
      try {
        const info = await stat(this.blobPath(digest));
        return [{ mediaType: '', digest, size: info.size }];
      } catch (err) {
        if (isMissing(err)) throw new OciLayoutError(`${this.displayName}: no manifest ${digest} in the layout`);
        throw err;
      }
    }
    const wanted = tag ?? DEFAULT_TAG;
    const tagged = index.manifests.filter((entry) => entry.annotations?.[REF_NAME_ANNOTATION] === wanted);
    if (tagged.length > 0) return tagged;
    if (tag === undefined && index.manifests.length === 1) return [index.manifests[0]!];
    const tags = [...new Set(index.manifests.map((entry) => entry.annotations?.[REF_NAME_ANNOTATION]).filter((t) => t !== undefined))];
    throw new OciLayoutError(
      `${this.displayName}: no image tagged ${JSON.stringify(wanted)} (tags: ${tags.length ? tags.join(', ') : 'none'}; ${index.manifests.length} manifest(s))`,
    );
  }

  async resolve(options: ResolveOptions = {}): Promise<ResolvedImage> {
    const platform = options.platform ?? this.platform;
    const index = await this.readIndex();
    const candidates = await this.candidates(index);
    const chosen = candidates.length === 1 ? candidates[0]! : selectManifest(candidates, platform, `${this.displayName} index.json`);
    checkDescriptor(chosen);
    const bytes = await this.readVerified(chosen, MAX_MANIFEST_BYTES, 'resolve manifest');
    return resolveThroughIndexes(chosen, bytes, platform, (child) => this.readVerified(child, MAX_MANIFEST_BYTES, 'resolve manifest'), this.displayName);
  }

  async fetchBlob(desc: Descriptor): Promise<Buffer> {
    return this.readVerified(desc, this.fetchBlobMax, 'fetch blob');
  }

  async openBlob(desc: Descriptor, options: { signal?: AbortSignal } = {}): Promise<Readable> {
    options.signal?.throwIfAborted();
    checkDescriptor(desc);
    const path = this.blobPath(desc.digest);
    const handle = await open(path, 'r').catch((err: unknown) => {
      if (isMissing(err)) throw new OciLayoutError(`${this.displayName}: blob ${desc.digest} is not in the layout`);
      throw err;
    });
    const verifier = new VerifyingStream(desc, `open blob ${this.displayName}`);
    const stream = handle.createReadStream();
    const onAbort = (): void => {
      verifier.destroy(options.signal?.reason instanceof Error ? options.signal.reason : new Error('aborted'));
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    pipelineCallback(stream, verifier, () => options.signal?.removeEventListener('abort', onAbort));
    return verifier;
  }

  async fetchRange(desc: Descriptor, start: number, end: number, options: { signal?: AbortSignal } = {}): Promise<Buffer> {
    options.signal?.throwIfAborted();
    checkDescriptor(desc);
    checkRange(desc, start, end);
    const length = end - start;
    if (length === 0) return Buffer.alloc(0);
    const where = `fetch range ${start}-${end - 1} of ${desc.digest} from ${this.displayName}`;
    const handle = await open(this.blobPath(desc.digest), 'r').catch((err: unknown) => {
      if (isMissing(err)) throw new OciLayoutError(`${this.displayName}: blob ${desc.digest} is not in the layout`);
      throw err;
    });
    try {
      const { size } = await handle.stat();
      if (size !== desc.size) throw new ContentVerificationError(`${where}: blob has ${size} bytes on disk, descriptor says ${desc.size}`, desc.digest, 'size');
      const out = Buffer.allocUnsafe(length);
      let filled = 0;
      while (filled < length) {
        const { bytesRead } = await handle.read(out, filled, length - filled, start + filled);
        if (bytesRead === 0) throw new ContentVerificationError(`${where}: file ended after ${start + filled} bytes`, desc.digest, 'range');
        filled += bytesRead;
      }
      return out;
    } finally {
      await handle.close();
    }
  }

  async hasBlob(desc: Descriptor): Promise<boolean> {
    checkDescriptor(desc);
    try {
      const info = await stat(this.blobPath(desc.digest));
      return info.isFile() && info.size === desc.size;
    } catch (err) {
      if (isMissing(err)) return false;
      throw err;
    }
  }

  async pushBlob(desc: Descriptor, content: BlobContent): Promise<void> {
    checkDescriptor(desc);
    if (await this.hasBlob(desc)) return;
    await this.ensureLayout();
    const path = this.blobPath(desc.digest);
    await mkdir(dirname(path), { recursive: true });
    const where = `push ${desc.digest} to ${this.displayName}`;
    if ('bytes' in content) {
      verifyContent(desc, content.bytes, where);
      await writeAtomically(path, content.bytes);
      return;
    }
    const temp = join(dirname(path), `.tmp-${randomUUID()}`);
    try {
      const source = 'path' in content ? createReadStream(content.path) : await content.stream();
      await pipeline(source, new VerifyingStream(desc, where), createWriteStream(temp, { flags: 'wx' }));
      await rename(temp, path);
    } catch (err) {
      await rm(temp, { force: true });
      throw err;
    }
  }

  async fetchManifest(target: string): Promise<{ descriptor: Descriptor; bytes: Buffer } | undefined> {
    const index = await this.readIndex();
    const entry = target.includes(':')
      ? index.manifests.find((m) => m.digest === target)
      : index.manifests.find((m) => m.annotations?.[REF_NAME_ANNOTATION] === target);
    if (!entry) return undefined;
    checkDescriptor(entry);
    const { annotations: _annotations, ...descriptor } = entry;
    return { descriptor, bytes: await this.readVerified(entry, MAX_MANIFEST_BYTES, 'fetch manifest') };
  }

  async pushManifest(mediaType: string, bytes: Buffer, options: { tag?: string; untagged?: boolean } = {}): Promise<Descriptor> {
    if (bytes.length > MAX_MANIFEST_BYTES) throw new RangeError(`push manifest ${this.displayName}: manifest of ${bytes.length} bytes exceeds ${MAX_MANIFEST_BYTES}`);
    const descriptor: Descriptor = { mediaType, digest: sha256Digest(bytes), size: bytes.length };
    await this.pushBlob(descriptor, { bytes });
    const { tag, digest } = this.reference;
    const refName = options.untagged ? undefined : (options.tag ?? tag ?? (digest === undefined ? DEFAULT_TAG : undefined));
    await withIndexLock(this.dir, async () => {
      const index = await this.readIndex();
      let manifests: Descriptor[];
      if (refName !== undefined) {
        manifests = index.manifests.filter((entry) => entry.annotations?.[REF_NAME_ANNOTATION] !== refName);
        manifests.push({ ...descriptor, annotations: { [REF_NAME_ANNOTATION]: refName } });
      } else {
        manifests = [...index.manifests];
        if (!manifests.some((entry) => entry.digest === descriptor.digest)) manifests.push({ ...descriptor });
      }
      const updated: ImageIndex = { ...index, manifests };
      await writeAtomically(join(this.dir, INDEX_FILE), JSON.stringify(updated));
    });
    return descriptor;
  }

  async close(): Promise<void> {
    // Nothing is held open between calls.
  }
}

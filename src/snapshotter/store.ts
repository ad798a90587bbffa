// The snapshotter's embedded metadata store: one JSON record per snapshot, `<dir>/<id>.json`, each written
// atomically and durably (atomicfile.ts) and carrying the SHA-256 of its own record, so that a crash at any
// point leaves every record either in its old or its new state, and a damaged file is recognized instead of
// being trusted. Changing a snapshot (commit, label update) rewrites only its own file; nothing is shared
// between records, so one bad file cannot take others with it.
//
// File layout (one line of JSON):
//   {"format":"erofs-lazy-snapshot","version":1,"sha256":"<hex of JSON.stringify(record)>","record":{...}}
//
// At open, temp files of interrupted writes are deleted, and every record is checked (envelope, checksum,
// shape, id matching the file name, unique names). A record that fails raises MetadataCorruptError naming
// the file and the reason, unless the caller's onCorrupt handler accepts it: the file is then renamed to
// `<id>.json.corrupt-<time>` (kept for inspection, never loaded again) and the store opens without it.
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import type { Descriptor } from '../oci/types.js';
import { fsyncDir, removeFileDurably, TEMP_FILE_PATTERN, writeFileAtomic } from './atomicfile.js';

export const RECORD_FORMAT = 'erofs-lazy-snapshot';
export const RECORD_VERSION = 1;
const RECORD_SUFFIX = '.json';
const RECORD_NAME = /^([1-9][0-9]{0,15})\.json$/;
const CORRUPT_SUFFIX = '.corrupt-';

export type SnapshotKind = 'active' | 'view' | 'committed';
const KINDS: readonly SnapshotKind[] = ['active', 'view', 'committed'];

/** What a remote (lazily mounted) layer snapshot needs to be mounted again without the registry. */
export interface RemoteLayerRef {
  /** Image reference the layer came from (the cri.image-ref label), for messages and later fetches. */
  imageRef: string;
  /** Digest of the image manifest that lists the layer: the trusted source of the descriptor. */
  manifestDigest: string;
  /** The layer descriptor from that manifest (digest, size, media type, chunk table annotations). */
  descriptor: Descriptor;
}

export interface SnapshotRecord {
  /** Decimal id, unique for the life of the root: names the record file and snapshots/<id>. */
  id: string;
  /** The key of an active or view snapshot, the name of a committed one. */
  name: string;
  kind: SnapshotKind;
  /** Name of the committed parent snapshot, if any. */
  parent?: string;
  labels: Record<string, string>;
  /** ISO 8601. */
  createdAt: string;
  updatedAt: string;
  /** Set for a committed snapshot served lazily from a seekable EROFS layer. */
  remote?: RemoteLayerRef;
}

export class MetadataCorruptError extends Error {
  override name = 'MetadataCorruptError';
  constructor(
    readonly file: string,
    readonly reason: string,
  ) {
    super(`snapshot metadata record ${file} is damaged: ${reason}`);
  }
}

export interface MetadataStoreOptions {
  /**
   * Called for each damaged record found at open. Returning sets the file aside (renamed with a
   * ".corrupt-<time>" suffix) and opens without it; throwing (the default rethrows) fails the open.
   */
  onCorrupt?: (err: MetadataCorruptError) => void;
}

function checksum(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function isStringMap(value: unknown): value is Record<string, string> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && Object.values(value).every((v) => typeof v === 'string');
}

function isDescriptor(value: unknown): value is Descriptor {
  if (typeof value !== 'object' || value === null) return false;
  const d = value as Partial<Descriptor>;
  return typeof d.mediaType === 'string' && typeof d.digest === 'string' && Number.isSafeInteger(d.size) && (d.annotations === undefined || isStringMap(d.annotations));
}

/** Why `value` is not a valid record, or undefined. */
function recordProblem(value: unknown): string | undefined {
  if (typeof value !== 'object' || value === null) return 'record is not an object';
  const r = value as Partial<SnapshotRecord>;
  if (typeof r.id !== 'string' || !/^[1-9][0-9]{0,15}$/.test(r.id)) return `invalid id ${JSON.stringify(r.id)}`;
  if (typeof r.name !== 'string' || r.name === '') return 'missing name';
  if (!KINDS.includes(r.kind as SnapshotKind)) return `invalid kind ${JSON.stringify(r.kind)}`;
  if (r.parent !== undefined && (typeof r.parent !== 'string' || r.parent === '')) return 'invalid parent';
  if (!isStringMap(r.labels)) return 'labels are not a string map';
  if (typeof r.createdAt !== 'string' || Number.isNaN(Date.parse(r.createdAt))) return 'invalid createdAt';
  if (typeof r.updatedAt !== 'string' || Number.isNaN(Date.parse(r.updatedAt))) return 'invalid updatedAt';
  if (r.remote !== undefined) {
    const m = r.remote as Partial<RemoteLayerRef>;
    if (typeof m.imageRef !== 'string' || typeof m.manifestDigest !== 'string' || !isDescriptor(m.descriptor)) return 'invalid remote layer reference';
    if (r.kind !== 'committed') return 'a remote layer snapshot must be committed';
  }
  return undefined;
}

/** Serializes a record into its file content. */
export function encodeRecord(record: SnapshotRecord): string {
  const text = JSON.stringify(record);
  return `{"format":${JSON.stringify(RECORD_FORMAT)},"version":${RECORD_VERSION},"sha256":"${checksum(text)}","record":${text}}\n`;
}

/** Parses and checks a record file's content; throws MetadataCorruptError naming `file`. */
export function decodeRecord(file: string, content: string): SnapshotRecord {
  let envelope: unknown;
  try {
    envelope = JSON.parse(content);
  } catch (err) {
    throw new MetadataCorruptError(file, `not valid JSON (a torn write?): ${(err as Error).message}`);
  }
  if (typeof envelope !== 'object' || envelope === null) throw new MetadataCorruptError(file, 'not a JSON object');
  const e = envelope as { format?: unknown; version?: unknown; sha256?: unknown; record?: unknown };
  if (e.format !== RECORD_FORMAT) throw new MetadataCorruptError(file, `format ${JSON.stringify(e.format)}, expected ${RECORD_FORMAT}`);
  if (e.version !== RECORD_VERSION) throw new MetadataCorruptError(file, `version ${JSON.stringify(e.version)}, expected ${RECORD_VERSION}`);
  const text = JSON.stringify(e.record);
  if (typeof e.sha256 !== 'string' || e.sha256 !== checksum(text)) throw new MetadataCorruptError(file, 'record does not match its SHA-256');
  const problem = recordProblem(e.record);
  if (problem) throw new MetadataCorruptError(file, problem);
  return e.record as SnapshotRecord;
}

function clone(record: SnapshotRecord): SnapshotRecord {
  return structuredClone(record);
}

export class MetadataStore {
  readonly dir: string;
  readonly #byId = new Map<string, SnapshotRecord>();
  readonly #byName = new Map<string, SnapshotRecord>();
  #nextId = 1;

  private constructor(dir: string) {
    this.dir = dir;
  }

  /** Opens (creating the directory when missing) and loads every record. */
  static async open(dir: string, options: MetadataStoreOptions = {}): Promise<MetadataStore> {
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const store = new MetadataStore(dir);
    const onCorrupt =
      options.onCorrupt ??
      ((err: MetadataCorruptError) => {
        throw err;
      });
    let removedTemp = false;
    for (const name of (await readdir(dir)).sort()) {
      if (TEMP_FILE_PATTERN.test(name)) {
        await unlink(join(dir, name)).catch(() => undefined);
        removedTemp = true;
        continue;
      }
      const match = RECORD_NAME.exec(name);
      if (!match) continue;
      const file = join(dir, name);
      const id = match[1]!;
      store.#nextId = Math.max(store.#nextId, Number(id) + 1);
      try {
        const record = decodeRecord(file, await readFile(file, 'utf8'));
        if (record.id !== id) throw new MetadataCorruptError(file, `record id ${record.id} does not match the file name`);
        const other = store.#byName.get(record.name);
        if (other) throw new MetadataCorruptError(file, `name ${JSON.stringify(record.name)} is also used by record ${other.id}`);
        store.#index(record);
      } catch (err) {
        if (!(err instanceof MetadataCorruptError)) throw err;
        onCorrupt(err);
        await rename(file, `${file}${CORRUPT_SUFFIX}${new Date().toISOString().replace(/[:.]/g, '-')}`);
        removedTemp = true;
      }
    }
    if (removedTemp) await fsyncDir(dir);
    return store;
  }

  #index(record: SnapshotRecord): void {
    this.#byId.set(record.id, record);
    this.#byName.set(record.name, record);
  }

  get size(): number {
    return this.#byId.size;
  }

  /** A copy of the record named `name`. */
  get(name: string): SnapshotRecord | undefined {
    const r = this.#byName.get(name);
    return r ? clone(r) : undefined;
  }

  has(name: string): boolean {
    return this.#byName.has(name);
  }

  /** Copies of every record, by id. */
  all(): SnapshotRecord[] {
    return [...this.#byId.values()].sort((a, b) => Number(a.id) - Number(b.id)).map(clone);
  }

  /** Names of the snapshots whose parent is `name`. */
  children(name: string): string[] {
    return [...this.#byId.values()].filter((r) => r.parent === name).map((r) => r.name);
  }

  /**
   * A fresh id, above every id seen in this store and above `atLeast` (e.g. the highest snapshot directory
   * on disk, so that a directory left by a removed record is never reused).
   */
  allocateId(atLeast = 0): string {
    this.#nextId = Math.max(this.#nextId, atLeast + 1);
    return String(this.#nextId++);
  }

  /** Creates or replaces (by id) a record, durably, before updating the in-memory view. */
  async put(record: SnapshotRecord): Promise<void> {
    const problem = recordProblem(record);
    if (problem) throw new Error(`refusing to store an invalid snapshot record: ${problem}`);
    const holder = this.#byName.get(record.name);
    if (holder && holder.id !== record.id) throw new Error(`snapshot name ${JSON.stringify(record.name)} is already used by record ${holder.id}`);
    const copy = clone(record);
    await writeFileAtomic(this.dir, `${record.id}${RECORD_SUFFIX}`, encodeRecord(copy));
    const previous = this.#byId.get(record.id);
    if (previous) this.#byName.delete(previous.name);
    this.#index(copy);
    this.#nextId = Math.max(this.#nextId, Number(record.id) + 1);
  }

  /** Deletes a record durably; an unknown id is not an error. */
  async delete(id: string): Promise<void> {
    await removeFileDurably(this.dir, `${id}${RECORD_SUFFIX}`);
    const previous = this.#byId.get(id);
    if (previous) {
      this.#byId.delete(id);
      this.#byName.delete(previous.name);
    }
  }
}

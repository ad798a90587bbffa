// Snapshot semantics of the snapshotter, as containerd's overlayfs snapshotter has them: each snapshot owns
// `snapshots/<id>/fs` (its files, the upper dir of an active snapshot) and, when active, `snapshots/<id>/work`
// (overlayfs' work dir). An active snapshot without parent is a rw bind mount of its fs; with parents it is an
// overlay of the parents' fs dirs (top first) under its own upper/work dirs. A view is a ro bind of its single
// parent (or of its own empty fs) or a ro overlay of its parents. Commit turns an active snapshot into a
// committed one whose fs becomes a lower layer for its children; Remove refuses a snapshot with children.
//
// Remote snapshots: a Prepare whose labels name a seekable EROFS layer (see RemoteLayerProvider) is answered
// by mounting that layer lazily at the new snapshot's fs dir, committing it under the `containerd.io/
// snapshot.ref` name with the requested parent, and failing with ALREADY_EXISTS, which tells containerd that
// the layer needs no download. When the layer is not seekable, or the remote mount fails, the Prepare goes
// the ordinary way (containerd then applies the layer itself).
//
// Metadata changes run one at a time (a Mutex); the slow part of a remote Prepare (registry, mounts) runs
// outside it and is re-validated before it is committed.
import type { Dirent } from 'node:fs';
import { chown, lstat, mkdir, readdir, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { alreadyExists, errorMessage, failedPrecondition, invalidArgument, notFound, SnapshotError } from './errors.js';
import { matchFilters, parseFilters } from './filters.js';
import { Mutex } from './lock.js';
import { mountPointsBelow } from './mountinfo.js';
import type { MetadataStore, RemoteLayerRef, SnapshotKind, SnapshotRecord } from './store.js';

/** The committed name containerd wants a remote layer snapshot to get (its chain ID, as containerd names it). */
export const LABEL_SNAPSHOT_REF = 'containerd.io/snapshot.ref';
/** Image reference, layer digest and manifest digest, as containerd's CRI plugin (and rpull) pass them. */
export const LABEL_CRI_IMAGE_REF = 'containerd.io/snapshot/cri.image-ref';
export const LABEL_CRI_LAYER_DIGEST = 'containerd.io/snapshot/cri.layer-digest';
export const LABEL_CRI_MANIFEST_DIGEST = 'containerd.io/snapshot/cri.manifest-digest';
/** Set on the snapshots this snapshotter mounted lazily ("true"). */
export const LABEL_REMOTE = 'containerd.io/snapshot/erofs-lazy.remote';

/** containerd's limit on one label: key and value together. */
export const MAX_LABEL_BYTES = 4096;

export const SNAPSHOTS_DIR = 'snapshots';
const FS_DIR = 'fs';
const WORK_DIR = 'work';
const FS_DIR_MODE = 0o755;
const WORK_DIR_MODE = 0o700;
const STAT_BLOCK_BYTES = 512;
const SNAPSHOT_DIR_NAME = /^[1-9][0-9]{0,15}$/;

export interface MountSpec {
  type: string;
  source: string;
  options: string[];
}

export interface SnapshotInfo {
  name: string;
  parent?: string;
  kind: SnapshotKind;
  labels: Record<string, string>;
  createdAt: Date;
  updatedAt: Date;
}

export interface SnapshotUsage {
  /** Bytes. */
  size: number;
  inodes: number;
}

/** What the labels of a Prepare ask for when they name a remote layer. */
export interface RemoteLayerRequest {
  /** Name the committed snapshot gets (LABEL_SNAPSHOT_REF). */
  target: string;
  imageRef: string;
  layerDigest: string;
  manifestDigest: string;
}

/** Mounts seekable EROFS layers lazily; implemented by RemoteLayerManager (layers.ts). */
export interface RemoteLayerProvider {
  /**
   * Looks the layer up in its manifest: its reference (and verified, persisted chunk table) when it can be
   * served lazily, `{ notRemote }` with the reason when it is not seekable. Throws when it cannot tell (e.g.
   * the registry is down).
   */
  resolve(request: RemoteLayerRequest): Promise<RemoteLayerRef | { notRemote: string }>;
  /** Shows the layer's files at `fsDir` for snapshot `snapshotId`, mounting the layer if nobody has it yet. */
  attach(snapshotId: string, ref: RemoteLayerRef, fsDir: string): Promise<void>;
  /** Whether attach succeeded for this snapshot (and detach has not run). */
  isAttached(snapshotId: string): boolean;
  /**
   * Undoes attach; when no other snapshot has the layer mounted it is unmounted, and when `lastUse` (no
   * snapshot record refers to the layer any more) its cached chunks and saved table are removed too.
   */
  detach(snapshotId: string, layerDigest: string, fsDir: string, lastUse: boolean): Promise<void>;
  /** Usage reported for a remote snapshot: bytes of its layer in the chunk cache. */
  usage(layerDigest: string): Promise<SnapshotUsage>;
  /** Removes persisted data of layers that no snapshot in `inUse` (layer digests) uses. */
  cleanup(inUse: ReadonlySet<string>): Promise<void>;
}

export interface SnapshotterOptions {
  root: string;
  store: MetadataStore;
  remote?: RemoteLayerProvider;
  log: (line: string) => void;
  /** Clock (tests). */
  now?: () => Date;
}

function validateLabels(labels: Record<string, string>): void {
  for (const [k, v] of Object.entries(labels)) {
    if (k === '') throw invalidArgument('label key must not be empty');
    if (Buffer.byteLength(k) + Buffer.byteLength(v) > MAX_LABEL_BYTES) {
      throw invalidArgument(`label ${JSON.stringify(k.slice(0, 64))}: key and value exceed ${MAX_LABEL_BYTES} bytes`);
    }
  }
}

function withoutEmpty(labels: Record<string, string>): Record<string, string> {
  return Object.fromEntries(Object.entries(labels).filter(([, v]) => v !== ''));
}

/** The remote layer request in `labels`, if they carry all four labels. */
export function remoteRequestFrom(labels: Record<string, string>): RemoteLayerRequest | undefined {
  const target = labels[LABEL_SNAPSHOT_REF];
  const imageRef = labels[LABEL_CRI_IMAGE_REF];
  const layerDigest = labels[LABEL_CRI_LAYER_DIGEST];
  const manifestDigest = labels[LABEL_CRI_MANIFEST_DIGEST];
  if (!target || !imageRef || !layerDigest || !manifestDigest) return undefined;
  return { target, imageRef, layerDigest, manifestDigest };
}

/** Disk usage of a tree like du: allocated blocks and distinct inodes (hard links counted once). */
export async function diskUsage(dir: string): Promise<SnapshotUsage> {
  const seen = new Set<string>();
  let size = 0;
  const visit = async (path: string): Promise<void> => {
    let st;
    try {
      st = await lstat(path, { bigint: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    const inode = `${st.dev}:${st.ino}`;
    if (seen.has(inode)) return;
    seen.add(inode);
    size += Number(st.blocks) * STAT_BLOCK_BYTES;
    if (!st.isDirectory()) return;
    let entries: Dirent[];
    try {
      entries = await readdir(path, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw err;
    }
    for (const e of entries) await visit(join(path, e.name));
  };
  await visit(dir);
  return { size, inodes: seen.size };
}

export class Snapshotter {
  readonly root: string;
  readonly #store: MetadataStore;
  readonly #remote: RemoteLayerProvider | undefined;
  readonly #log: (line: string) => void;
  readonly #now: () => Date;
  readonly #lock = new Mutex();
  /** Highest numeric snapshot directory found on disk at start (ids are allocated above it). */
  #dirIdFloor = 0;
  /** Ids of remote snapshots being mounted (their dirs exist before their records). */
  readonly #pending = new Set<string>();

  constructor(options: SnapshotterOptions) {
    this.root = options.root;
    this.#store = options.store;
    this.#remote = options.remote;
    this.#log = options.log;
    this.#now = options.now ?? (() => new Date());
  }

  get snapshotsDir(): string {
    return join(this.root, SNAPSHOTS_DIR);
  }

  snapshotDir(id: string): string {
    return join(this.snapshotsDir, id);
  }

  fsDir(id: string): string {
    return join(this.snapshotDir(id), FS_DIR);
  }

  workDir(id: string): string {
    return join(this.snapshotDir(id), WORK_DIR);
  }

  /** Creates the snapshots dir and notes the ids already used on disk. */
  async init(): Promise<void> {
    await mkdir(this.snapshotsDir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.snapshotsDir)) {
      if (SNAPSHOT_DIR_NAME.test(name)) this.#dirIdFloor = Math.max(this.#dirIdFloor, Number(name));
    }
  }

  /** Mounts every remote snapshot again (after a restart); failures are logged, retried when used. */
  async restoreRemote(): Promise<{ restored: number; failed: number }> {
    const remote = this.#remote;
    if (!remote) return { restored: 0, failed: 0 };
    const results = await Promise.all(
      this.#store.all().flatMap((r) => {
        const ref = r.remote;
        if (!ref) return [];
        return [
          remote.attach(r.id, ref, this.fsDir(r.id)).then(
            () => true,
            (err: unknown) => {
              this.#log(`remote snapshot ${r.name} (layer ${ref.descriptor.digest}) could not be mounted again: ${errorMessage(err)}; will retry when it is used`);
              return false;
            },
          ),
        ];
      }),
    );
    const restored = results.filter(Boolean).length;
    return { restored, failed: results.length - restored };
  }

  #info(r: SnapshotRecord): SnapshotInfo {
    const info: SnapshotInfo = { name: r.name, kind: r.kind, labels: { ...r.labels }, createdAt: new Date(r.createdAt), updatedAt: new Date(r.updatedAt) };
    if (r.parent !== undefined) info.parent = r.parent;
    return info;
  }

  #get(key: string): SnapshotRecord {
    const r = this.#store.get(key);
    if (!r) throw notFound(`snapshot ${key} does not exist`);
    return r;
  }

  /** The committed parent `parent`, checked. */
  #parentRecord(parent: string): SnapshotRecord {
    const p = this.#store.get(parent);
    if (!p) throw notFound(`parent snapshot ${parent} does not exist`);
    if (p.kind !== 'committed') throw invalidArgument(`parent ${parent} is not a committed snapshot`);
    return p;
  }

  /** The ancestors of a snapshot, nearest first. */
  #ancestors(r: SnapshotRecord): SnapshotRecord[] {
    const chain: SnapshotRecord[] = [];
    let parent = r.parent;
    while (parent !== undefined) {
      const p = this.#store.get(parent);
      if (!p) throw notFound(`parent snapshot ${parent} of ${r.name} does not exist`);
      chain.push(p);
      parent = p.parent;
    }
    return chain;
  }

  /** Mounts again remote ancestors whose layer is not mounted (e.g. the registry was down at start). */
  async #ensureAttached(records: SnapshotRecord[]): Promise<void> {
    for (const p of records) {
      if (!p.remote || !this.#remote || this.#remote.isAttached(p.id)) continue;
      try {
        await this.#remote.attach(p.id, p.remote, this.fsDir(p.id));
      } catch (err) {
        throw new SnapshotError('unavailable', `layer ${p.remote.descriptor.digest} of snapshot ${p.name} is not mounted: ${errorMessage(err)}`, { cause: err });
      }
    }
  }

  #mountsFor(r: SnapshotRecord, ancestors: SnapshotRecord[]): MountSpec[] {
    const lowers = ancestors.map((p) => this.fsDir(p.id));
    if (r.kind === 'active') {
      if (lowers.length === 0) return [{ type: 'bind', source: this.fsDir(r.id), options: ['rw', 'rbind'] }];
      return [
        {
          type: 'overlay',
          source: 'overlay',
          options: [`workdir=${this.workDir(r.id)}`, `upperdir=${this.fsDir(r.id)}`, `lowerdir=${lowers.join(':')}`],
        },
      ];
    }
    if (lowers.length === 0) return [{ type: 'bind', source: this.fsDir(r.id), options: ['ro', 'rbind'] }];
    if (lowers.length === 1) return [{ type: 'bind', source: lowers[0]!, options: ['ro', 'rbind'] }];
    return [{ type: 'overlay', source: 'overlay', options: [`lowerdir=${lowers.join(':')}`] }];
  }

  prepare(key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    return this.#create('active', key, parent, labels);
  }

  view(key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    return this.#create('view', key, parent, labels);
  }

  async #create(kind: 'active' | 'view', key: string, parent: string, labels: Record<string, string>): Promise<MountSpec[]> {
    if (key === '') throw invalidArgument('snapshot key must not be empty');
    validateLabels(labels);
    const request = kind === 'active' && this.#remote ? remoteRequestFrom(labels) : undefined;
    if (request) await this.#tryRemote(key, parent, labels, request);
    if (parent !== '') {
      // Remote layers below must be mounted before the snapshot exists (e.g. after a failed restore).
      const p = this.#parentRecord(parent);
      await this.#ensureAttached([p, ...this.#ancestors(p)]);
    }
    const { record, ancestors } = await this.#lock.run(async () => {
      if (this.#store.has(key)) throw alreadyExists(`snapshot ${key} already exists`);
      const parentRecord = parent === '' ? undefined : this.#parentRecord(parent);
      const id = this.#store.allocateId(this.#dirIdFloor);
      const now = this.#now().toISOString();
      const r: SnapshotRecord = { id, name: key, kind, labels: withoutEmpty(labels), createdAt: now, updatedAt: now };
      if (parentRecord) r.parent = parentRecord.name;
      const fs = this.fsDir(id);
      try {
        await mkdir(this.snapshotDir(id), { mode: 0o700 });
        await mkdir(fs, { mode: FS_DIR_MODE });
        if (kind === 'active') await mkdir(this.workDir(id), { mode: WORK_DIR_MODE });
        if (parentRecord) {
          // Like overlayfs' snapshotter: the new upper dir gets the owner of the parent's root.
          const st = await stat(this.fsDir(parentRecord.id)).catch(() => undefined);
          if (st) await chown(fs, st.uid, st.gid);
        }
        await this.#store.put(r);
      } catch (err) {
        await rm(this.snapshotDir(id), { recursive: true, force: true }).catch(() => undefined);
        throw err;
      }
      return { record: r, ancestors: this.#ancestors(r) };
    });
    await this.#ensureAttached(ancestors);
    return this.#mountsFor(record, ancestors);
  }

  /**
   * The remote path of a Prepare: throws ALREADY_EXISTS once the layer is committed as `request.target`;
   * returns (for the ordinary path) when the layer is not seekable or cannot be mounted.
   */
  async #tryRemote(key: string, parent: string, labels: Record<string, string>, request: RemoteLayerRequest): Promise<void> {
    const remote = this.#remote!;
    const existing = this.#store.get(request.target);
    if (existing?.kind === 'committed') throw alreadyExists(`target snapshot ${request.target} already exists`);
    await this.#lock.run(async () => {
      if (this.#store.has(key)) throw alreadyExists(`snapshot ${key} already exists`);
      if (parent !== '') this.#parentRecord(parent);
    });
    let ref: RemoteLayerRef | { notRemote: string };
    try {
      ref = await remote.resolve(request);
    } catch (err) {
      this.#log(`layer ${request.layerDigest} of ${request.imageRef}: remote mount failed (${errorMessage(err)}); containerd will download it`);
      return;
    }
    if ('notRemote' in ref) {
      this.#log(`layer ${request.layerDigest} of ${request.imageRef} is not lazy: ${ref.notRemote}`);
      return;
    }
    const id = await this.#lock.run(async () => {
      const allocated = this.#store.allocateId(this.#dirIdFloor);
      this.#pending.add(allocated);
      return allocated;
    });
    try {
      await this.#commitRemote(id, parent, labels, request, ref);
    } finally {
      this.#pending.delete(id);
    }
  }

  async #commitRemote(id: string, parent: string, labels: Record<string, string>, request: RemoteLayerRequest, ref: RemoteLayerRef): Promise<void> {
    const remote = this.#remote!;
    const fs = this.fsDir(id);
    try {
      await mkdir(fs, { recursive: true, mode: FS_DIR_MODE });
      await remote.attach(id, ref, fs);
    } catch (err) {
      await this.#discardRemote(id, ref);
      this.#log(`layer ${request.layerDigest} of ${request.imageRef}: remote mount failed (${errorMessage(err)}); containerd will download it`);
      return;
    }
    const committed = await this.#lock.run(async () => {
      if (this.#store.has(request.target)) return false;
      if (parent !== '') this.#parentRecord(parent);
      const now = this.#now().toISOString();
      const r: SnapshotRecord = {
        id,
        name: request.target,
        kind: 'committed',
        labels: { ...withoutEmpty(labels), [LABEL_REMOTE]: 'true' },
        createdAt: now,
        updatedAt: now,
        remote: ref,
      };
      if (parent !== '') r.parent = parent;
      await this.#store.put(r);
      return true;
    }).catch(async (err: unknown) => {
      await this.#discardRemote(id, ref);
      throw err;
    });
    if (!committed) await this.#discardRemote(id, ref);
    else this.#log(`layer ${ref.descriptor.digest} of ${request.imageRef} mounted lazily as snapshot ${request.target}`);
    throw alreadyExists(`target snapshot ${request.target} already exists`);
  }

  async #discardRemote(id: string, ref: RemoteLayerRef): Promise<void> {
    try {
      await this.#remote!.detach(id, ref.descriptor.digest, this.fsDir(id), !this.#layerInUse(ref.descriptor.digest));
      await this.#removeDir(id);
    } catch (err) {
      this.#log(`cleanup of unused snapshot dir ${this.snapshotDir(id)} failed: ${errorMessage(err)}`);
    }
  }

  /** Whether a snapshot record refers to the layer. */
  #layerInUse(layerDigest: string): boolean {
    return this.#store.all().some((r) => r.remote?.descriptor.digest === layerDigest);
  }

  /** Removes snapshots/<id>, refusing while anything is mounted below it. */
  async #removeDir(id: string): Promise<void> {
    const dir = this.snapshotDir(id);
    const mounted = await mountPointsBelow(dir);
    if (mounted.length > 0) throw new Error(`not removing ${dir}: still mounted at ${mounted.join(', ')}`);
    await rm(dir, { recursive: true, force: true });
  }

  async mounts(key: string): Promise<MountSpec[]> {
    const r = this.#get(key);
    if (r.kind === 'committed') throw failedPrecondition(`snapshot ${key} is committed; only active and view snapshots have mounts`);
    const ancestors = this.#ancestors(r);
    await this.#ensureAttached(ancestors);
    return this.#mountsFor(r, ancestors);
  }

  commit(name: string, key: string, labels: Record<string, string>): Promise<void> {
    if (name === '') return Promise.reject(invalidArgument('commit name must not be empty'));
    validateLabels(labels);
    return this.#lock.run(async () => {
      const r = this.#get(key);
      if (r.kind !== 'active') throw failedPrecondition(`snapshot ${key} is not active`);
      if (this.#store.has(name)) throw alreadyExists(`snapshot ${name} already exists`);
      const now = this.#now().toISOString();
      await this.#store.put({ ...r, name, kind: 'committed', labels: withoutEmpty(labels), createdAt: now, updatedAt: now });
    });
  }

  async remove(key: string): Promise<void> {
    const removed = await this.#lock.run(async () => {
      const r = this.#get(key);
      const children = this.#store.children(key);
      if (children.length > 0) throw failedPrecondition(`cannot remove snapshot ${key}: it has children (${children.slice(0, 3).join(', ')})`);
      await this.#store.delete(r.id);
      return r;
    });
    try {
      if (removed.remote && this.#remote) {
        const digest = removed.remote.descriptor.digest;
        await this.#remote.detach(removed.id, digest, this.fsDir(removed.id), !this.#layerInUse(digest));
      }
      await this.#removeDir(removed.id);
    } catch (err) {
      // The record is gone; Cleanup removes what is left once it can.
      this.#log(`snapshot ${key} removed, but its files could not be released yet: ${errorMessage(err)}`);
    }
  }

  stat(key: string): SnapshotInfo {
    return this.#info(this.#get(key));
  }

  /** Updates the labels ("labels" replaces them all, "labels.KEY" one of them; no paths: all). */
  update(info: { name: string; labels: Record<string, string> }, paths: readonly string[]): Promise<SnapshotInfo> {
    if (info.name === '') return Promise.reject(invalidArgument('snapshot name must not be empty'));
    return this.#lock.run(async () => {
      const r = this.#get(info.name);
      let labels = { ...r.labels };
      if (paths.length === 0) labels = { ...info.labels };
      for (const path of paths) {
        if (path.startsWith('labels.')) {
          const k = path.slice('labels.'.length);
          const v = info.labels[k];
          if (v === undefined || v === '') delete labels[k];
          else labels[k] = v;
        } else if (path === 'labels') {
          labels = { ...info.labels };
        } else {
          throw invalidArgument(`cannot update ${JSON.stringify(path)} of snapshot ${info.name}: only labels can change`);
        }
      }
      labels = withoutEmpty(labels);
      validateLabels(labels);
      const updated: SnapshotRecord = { ...r, labels, updatedAt: this.#now().toISOString() };
      await this.#store.put(updated);
      return this.#info(updated);
    });
  }

  async usage(key: string): Promise<SnapshotUsage> {
    const r = this.#get(key);
    if (r.remote && this.#remote) return this.#remote.usage(r.remote.descriptor.digest);
    return diskUsage(this.fsDir(r.id));
  }

  list(filters: readonly string[]): SnapshotInfo[] {
    const parsed = parseFilters(filters);
    return this.#store
      .all()
      .filter((r) =>
        matchFilters(parsed, (path) => {
          const [field, ...rest] = path;
          switch (field) {
            case 'name':
              return rest.length === 0 ? r.name : undefined;
            case 'parent':
              return rest.length === 0 ? (r.parent ?? '') : undefined;
            case 'kind':
              return rest.length === 0 ? r.kind : undefined;
            case 'labels':
              return rest.length === 0 ? undefined : r.labels[rest.join('.')];
            default:
              return undefined;
          }
        }),
      )
      .map((r) => this.#info(r));
  }

  /** Removes snapshot dirs no record owns (left by a crash or a failed removal) and unused layer data. */
  cleanup(): Promise<void> {
    return this.#lock.run(async () => {
      const ids = new Set(this.#store.all().map((r) => r.id));
      for (const name of await readdir(this.snapshotsDir)) {
        if (ids.has(name) || this.#pending.has(name)) continue;
        try {
          await this.#removeDir(name);
        } catch (err) {
          this.#log(`cleanup: ${errorMessage(err)}`);
        }
      }
      if (this.#remote) {
        const inUse = new Set(this.#store.all().flatMap((r) => (r.remote ? [r.remote.descriptor.digest] : [])));
        await this.#remote.cleanup(inUse);
      }
    });
  }

  /** Number of remote snapshots (for metrics). */
  remoteCount(): number {
    return this.#store.all().filter((r) => r.remote !== undefined).length;
  }
}

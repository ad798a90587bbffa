// A read-only view of several EROFS layers stacked with overlay semantics (layers bottom first, as OCI
// manifests list them), or of one layer as it is ("raw": whiteouts shown as what they are). A name is taken
// from the top-most layer that has it; a directory merges the same directory of the layers below until one of
// them is opaque or is not a directory. Hidden: overlayfs whiteouts (character device 0:0), AUFS whiteouts
// (".wh.NAME" hides NAME below; ".wh..wh..opq" makes its directory opaque; other ".wh..wh.*" names are AUFS
// bookkeeping), and the "trusted.overlay.*" xattrs (overlayfs hides them too). Also a bounded depth-first walk.
import type { DataExtent } from './data.js';
import { EROFS_NAME_LEN } from './dir.js';
import { ErofsError, ErofsFormatError, ErofsPathError } from './errors.js';
import type { ErofsImage } from './image.js';
import type { ErofsInode, FileType } from './inode.js';
import { resolvePath } from './path.js';
import type { PathView, ResolveOptions } from './path.js';
import type { Xattr } from './xattr.js';

export const WHITEOUT_PREFIX = '.wh.';
export const WHITEOUT_META_PREFIX = '.wh..wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
export const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque';
export const OVERLAY_XATTR_PREFIX = 'trusted.overlay.';
/** Directories a walk descends at most (deeper ones are an error, not a stack overflow). */
export const MAX_WALK_DEPTH = 1024;

const WH = Buffer.from(WHITEOUT_PREFIX);
const WH_META = Buffer.from(WHITEOUT_META_PREFIX);
const OPQ = Buffer.from(OPAQUE_MARKER);

/** One layer's copy of a directory that takes part in a merged directory. */
export interface LayerDir {
  layer: number;
  inode: ErofsInode;
}

/** A file, directory or other node of the view, as the top-most layer holding it has it. */
export interface ViewNode {
  /** Index of the layer the node comes from (0 = bottom). */
  layer: number;
  inode: ErofsInode;
  /** For directories: the layer copies merged into it, top first. */
  dirs: LayerDir[];
}

/** A name in a (merged) directory listing. */
export interface ViewEntry {
  name: Buffer;
  layer: number;
  nid: number;
  fileType: FileType | 'unknown';
}

export interface LayeredViewOptions {
  /** One layer shown as it is: no whiteout processing, every xattr. Needs exactly one image. */
  raw?: boolean;
}

function startsWith(name: Buffer, prefix: Buffer): boolean {
  return name.length >= prefix.length && name.subarray(0, prefix.length).equals(prefix);
}

export function isOverlayWhiteout(inode: ErofsInode): boolean {
  return inode.type === 'char' && inode.rdev !== undefined && inode.rdev.major === 0 && inode.rdev.minor === 0;
}

export class LayeredView implements PathView<ViewNode> {
  /** Bottom first. */
  readonly layers: readonly ErofsImage[];
  readonly raw: boolean;

  constructor(layers: readonly ErofsImage[], options: LayeredViewOptions = {}) {
    if (layers.length === 0) throw new RangeError('a layered view needs at least one layer');
    this.raw = options.raw ?? false;
    if (this.raw && layers.length !== 1) throw new RangeError('a raw view shows exactly one layer');
    this.layers = layers;
  }

  image(node: ViewNode | LayerDir): ErofsImage {
    return this.layers[node.layer]!;
  }

  typeOf(node: ViewNode): FileType {
    return node.inode.type;
  }

  async #isOpaque(d: LayerDir): Promise<boolean> {
    const image = this.image(d);
    const xattrs = await image.xattrs(d.inode);
    if (xattrs.some((x) => x.name === OVERLAY_OPAQUE_XATTR && x.value.toString('latin1') === 'y')) return true;
    return (await image.lookup(d.inode, OPQ)) !== undefined;
  }

  async root(): Promise<ViewNode> {
    const top = this.layers.length - 1;
    const dirs: LayerDir[] = [];
    for (let layer = top; layer >= 0; layer--) {
      const d = { layer, inode: await this.layers[layer]!.root() };
      dirs.push(d);
      if (this.raw || layer === 0 || (await this.#isOpaque(d))) break;
    }
    return { layer: top, inode: dirs[0]!.inode, dirs };
  }

  /** The child `name` of directory `dir`, or undefined (absent or whited out). */
  async lookup(dir: ViewNode, name: Buffer): Promise<ViewNode | undefined> {
    if (this.raw) {
      const image = this.image(dir);
      const e = await image.lookup(dir.inode, name);
      if (!e) return undefined;
      const inode = await image.inode(e.nid);
      return { layer: dir.layer, inode, dirs: inode.type === 'dir' ? [{ layer: dir.layer, inode }] : [] };
    }
    if (startsWith(name, WH)) return undefined;
    const whName = name.length + WH.length <= EROFS_NAME_LEN ? Buffer.concat([WH, name]) : undefined;
    let result: ViewNode | undefined;
    for (const [k, d] of dir.dirs.entries()) {
      const image = this.image(d);
      // Whiteouts and opacity only matter when a lower layer's copy of the directory follows.
      const lowerFollows = k + 1 < dir.dirs.length;
      const e = await image.lookup(d.inode, name);
      const whiteout = whName && lowerFollows ? (await image.lookup(d.inode, whName)) !== undefined : false;
      if (!e) {
        if (whiteout) return result;
        continue;
      }
      const inode = await image.inode(e.nid);
      const here: LayerDir = { layer: d.layer, inode };
      if (!result) {
        if (isOverlayWhiteout(inode)) return undefined;
        if (inode.type !== 'dir') return { layer: d.layer, inode, dirs: [] };
        result = { layer: d.layer, inode, dirs: [here] };
      } else {
        if (inode.type !== 'dir') return result;
        result.dirs.push(here);
      }
      if (!lowerFollows || whiteout || (await this.#isOpaque(here))) return result;
    }
    return result;
  }

  /** The visible entries of `dir`, sorted by name bytes. */
  async readdir(dir: ViewNode): Promise<ViewEntry[]> {
    if (dir.inode.type !== 'dir') throw new ErofsPathError('ENOTDIR', `nid ${dir.inode.nid}`, 'not a directory');
    const out = new Map<string, ViewEntry>();
    const hidden = new Set<string>();
    for (const d of dir.dirs) {
      const image = this.image(d);
      const whiteouts: string[] = [];
      for await (const e of image.readdir(d.inode)) {
        const key = e.name.toString('latin1');
        if (!this.raw && startsWith(e.name, WH)) {
          if (!startsWith(e.name, WH_META)) whiteouts.push(key.slice(WHITEOUT_PREFIX.length));
          continue;
        }
        if (out.has(key) || hidden.has(key)) continue;
        if (!this.raw && e.fileType === 'char' && isOverlayWhiteout(await image.inode(e.nid))) {
          hidden.add(key);
          continue;
        }
        out.set(key, { name: Buffer.from(e.name), layer: d.layer, nid: e.nid, fileType: e.fileType });
      }
      for (const w of whiteouts) hidden.add(w);
    }
    return [...out.values()].sort((a, b) => Buffer.compare(a.name, b.name));
  }

  /** The node of a listed entry (directories are looked up again to find the layers they merge). */
  async child(dir: ViewNode, entry: ViewEntry): Promise<ViewNode> {
    const inode = await this.layers[entry.layer]!.inode(entry.nid);
    if (inode.type !== 'dir') return { layer: entry.layer, inode, dirs: [] };
    if (this.raw) return { layer: entry.layer, inode, dirs: [{ layer: entry.layer, inode }] };
    const node = await this.lookup(dir, entry.name);
    if (!node) throw new ErofsError(`directory entry ${entry.name.toString('latin1')} vanished between listing and lookup`);
    return node;
  }

  readlink(node: ViewNode): Promise<Buffer> {
    return this.image(node).readlink(node.inode);
  }

  async xattrs(node: ViewNode): Promise<Xattr[]> {
    const all = await this.image(node).xattrs(node.inode);
    return this.raw ? all : all.filter((x) => !x.name.startsWith(OVERLAY_XATTR_PREFIX));
  }

  read(node: ViewNode, offset: number, length: number): Promise<Buffer> {
    return this.image(node).read(node.inode, offset, length);
  }

  stream(node: ViewNode, chunkBytes?: number): AsyncGenerator<Buffer> {
    return this.image(node).stream(node.inode, chunkBytes);
  }

  extents(node: ViewNode): AsyncGenerator<DataExtent> {
    return this.image(node).extents(node.inode);
  }

  resolve(path: string | Buffer, options?: ResolveOptions): Promise<ViewNode> {
    return resolvePath(this, path, options);
  }

  /**
   * Depth-first walk below `start` (itself first), children in name order. Every directory is entered once: a
   * directory reached a second time (a cycle or a shared directory, which mkfs never writes) is an error.
   */
  async *walk(start: ViewNode, startPath: string): AsyncGenerator<{ path: string; node: ViewNode; depth: number }> {
    const seen = new Set<string>();
    const stack: Array<{ path: string; node: ViewNode; depth: number }> = [{ path: startPath, node: start, depth: 0 }];
    while (stack.length > 0) {
      const item = stack.pop()!;
      yield item;
      const { node, path, depth } = item;
      if (node.inode.type !== 'dir') continue;
      const key = `${node.layer}:${node.inode.nid}`;
      if (seen.has(key)) {
        throw new ErofsFormatError('directory', node.inode.offset, `directory nid ${node.inode.nid} of layer ${node.layer} is reached twice (at ${path})`);
      }
      seen.add(key);
      if (depth >= MAX_WALK_DEPTH) throw new ErofsFormatError('directory', node.inode.offset, `directories nested deeper than ${MAX_WALK_DEPTH} at ${path}`);
      const entries = await this.readdir(node);
      const base = path.endsWith('/') ? path : `${path}/`;
      const children: Array<{ path: string; node: ViewNode; depth: number }> = [];
      for (const e of entries) children.push({ path: base + displayName(e.name), node: await this.child(node, e), depth: depth + 1 });
      for (let k = children.length - 1; k >= 0; k--) stack.push(children[k]!);
    }
  }
}

/** A name's bytes for display: UTF-8 when valid, otherwise with \xNN for each byte >= 0x80. */
export function displayName(bytes: Buffer): string {
  const text = bytes.toString('utf8');
  if (Buffer.from(text, 'utf8').equals(bytes)) return text;
  let out = '';
  for (const b of bytes) out += b >= 0x80 ? `\\x${b.toString(16).padStart(2, '0')}` : String.fromCharCode(b);
  return out;
}

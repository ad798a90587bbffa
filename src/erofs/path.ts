// Path resolution over any tree view (one image or the layered view): components are looked up one by one
// from the image root, ".." stops at the root (paths never leave the image, as in a chroot), symlinks in the
// middle of a path are always followed and a final one when asked, absolute targets restart at the image root,
// and at most MAX_SYMLINK_HOPS symlinks are followed (ELOOP past that, like Linux's 40).
import { ErofsPathError } from './errors.js';
import { EROFS_NAME_LEN } from './dir.js';
import type { FileType } from './inode.js';

export const MAX_SYMLINK_HOPS = 40;
/** Longest path accepted (PATH_MAX). */
export const MAX_PATH_BYTES = 4096;

export interface PathView<N> {
  root(): Promise<N>;
  lookup(dir: N, name: Buffer): Promise<N | undefined>;
  typeOf(node: N): FileType;
  readlink(node: N): Promise<Buffer>;
}

export interface ResolveOptions {
  /** Follow a symlink in the last component (stat -L, cat); default false (lstat, ls). */
  followFinal?: boolean;
}

const SLASH = 0x2f;

function splitComponents(path: Buffer): Buffer[] {
  const out: Buffer[] = [];
  let start = 0;
  for (let i = 0; i <= path.length; i++) {
    if (i === path.length || path[i] === SLASH) {
      if (i > start) out.push(path.subarray(start, i));
      start = i + 1;
    }
  }
  return out;
}

function isDot(c: Buffer): boolean {
  return c.length === 1 && c[0] === 0x2e;
}

function isDotDot(c: Buffer): boolean {
  return c.length === 2 && c[0] === 0x2e && c[1] === 0x2e;
}

/** The node at `path` (relative paths start at the root too). */
export async function resolvePath<N>(view: PathView<N>, path: string | Buffer, options: ResolveOptions = {}): Promise<N> {
  const shown = typeof path === 'string' ? path : path.toString('utf8');
  const bytes = typeof path === 'string' ? Buffer.from(path, 'utf8') : path;
  if (bytes.length > MAX_PATH_BYTES) throw new ErofsPathError('ENAMETOOLONG', shown.slice(0, 64), `path longer than ${MAX_PATH_BYTES} bytes`);
  const root = await view.root();
  const stack: N[] = [root];
  // Components still to walk, last one at the end of the array: popping takes the next one.
  const pending = splitComponents(bytes).reverse();
  let hops = 0;
  let node: N = root;
  while (pending.length > 0) {
    const name = pending.pop()!;
    const dir = stack[stack.length - 1]!;
    if (view.typeOf(dir) !== 'dir') throw new ErofsPathError('ENOTDIR', shown, 'a component of the path is not a directory');
    if (isDot(name)) {
      node = dir;
      continue;
    }
    if (isDotDot(name)) {
      if (stack.length > 1) stack.pop();
      node = stack[stack.length - 1]!;
      continue;
    }
    if (name.length > EROFS_NAME_LEN) throw new ErofsPathError('ENAMETOOLONG', shown, `a component is longer than ${EROFS_NAME_LEN} bytes`);
    const child = await view.lookup(dir, name);
    if (child === undefined) throw new ErofsPathError('ENOENT', shown, 'no such file or directory');
    const last = pending.length === 0;
    if (view.typeOf(child) === 'symlink' && (!last || options.followFinal)) {
      if (++hops > MAX_SYMLINK_HOPS) throw new ErofsPathError('ELOOP', shown, `more than ${MAX_SYMLINK_HOPS} symbolic links`);
      const target = await view.readlink(child);
      const parts = splitComponents(target).reverse();
      pending.push(...parts);
      if (target[0] === SLASH) stack.length = 1;
      node = stack[stack.length - 1]!;
      continue;
    }
    stack.push(child);
    node = child;
  }
  return node;
}

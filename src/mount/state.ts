// The record of what one mount created (FUSE dir, loop devices, erofs mounts, overlay, temp dirs, the
// serving process), kept as JSON under the state root so that `umount` and `umount --all` can undo it in
// the right order, also after the serving process was killed.
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/** Where mount records live (tmpfs, so they vanish at reboot with the mounts they describe). */
export const DEFAULT_STATE_DIR = '/run/erofs-lazy';
const MOUNTS_SUBDIR = 'mounts';
export const STATE_FILE_NAME = 'state.json';

export interface LayerMountRecord {
  layerDigest: string;
  /** The file the loop device reads: a FUSE file (lazy) or a cached whole image. */
  file: string;
  lazy: boolean;
  loopDevice?: string;
  erofsMountpoint?: string;
}

export interface MountState {
  version: 1;
  /** Absolute mount point the user named. */
  mountpoint: string;
  reference: string;
  manifestDigest?: string;
  /** This mount's private directory (FUSE mount, layer mounts, rw dirs, stats socket, log). */
  dir: string;
  pid?: number;
  fuseMountpoint: string;
  layers: LayerMountRecord[];
  /** What is mounted at `mountpoint`: an overlay of the layers, or the single layer's erofs. */
  top?: 'overlay' | 'erofs';
  rw: boolean;
  statsSocket: string;
  createdAt: string;
}

export function mountsRoot(stateDir: string): string {
  return join(stateDir, MOUNTS_SUBDIR);
}

/** The private directory of the mount at `mountpoint` (an absolute, resolved path). */
export function mountDirFor(stateDir: string, mountpoint: string): string {
  const id = createHash('sha256').update(mountpoint).digest('hex').slice(0, 16);
  return join(mountsRoot(stateDir), id);
}

export async function writeState(state: MountState): Promise<void> {
  await mkdir(state.dir, { recursive: true });
  const tmp = join(state.dir, `.${STATE_FILE_NAME}.${process.pid}`);
  await writeFile(tmp, `${JSON.stringify(state, null, 2)}\n`);
  await rename(tmp, join(state.dir, STATE_FILE_NAME));
}

export async function readState(dir: string): Promise<MountState | undefined> {
  try {
    return JSON.parse(await readFile(join(dir, STATE_FILE_NAME), 'utf8')) as MountState;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new Error(`mount record ${join(dir, STATE_FILE_NAME)} is unreadable: ${(err as Error).message}`);
  }
}

/** Every mount directory under the state root, with its record when it has one. */
export async function listMounts(stateDir: string): Promise<Array<{ dir: string; state?: MountState }>> {
  let names: string[];
  try {
    names = await readdir(mountsRoot(stateDir));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
  const out: Array<{ dir: string; state?: MountState }> = [];
  for (const name of names.sort()) {
    const dir = join(mountsRoot(stateDir), name);
    out.push({ dir, state: await readState(dir).catch(() => undefined) });
  }
  return out;
}

/**
 * Whether `pid` is a live process. A zombie (exited, not yet reaped by its parent, which can take long under
 * some init processes) is not: it serves nothing, though kill(pid, 0) still succeeds on it.
 */
export function processAlive(pid: number | undefined): boolean {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
  try {
    // /proc/PID/stat: "pid (comm) state ...": the state letter follows the last ')'.
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

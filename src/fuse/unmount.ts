// Unmounting FUSE mount points from outside libfuse: the normal, busy-aware unmount used by
// LayerFilesystem.unmount, and the forced one that cleanup code uses for a mount left by a crashed
// serving process. A crash does not always end the FUSE connection: libfuse2 opens /dev/fuse without
// O_CLOEXEC, so any child the server had started (losetup, mount, ...) keeps the connection open, and
// every access then waits forever. The forced unmount therefore aborts the connection through fusectl
// (/sys/fs/fuse/connections/<minor>/abort) before detaching the mount.
import { execFile } from 'node:child_process';
import { access, readFile, writeFile } from 'node:fs/promises';
import { resolve } from 'node:path';

/** How long one fusermount/umount may take before it is treated as hung. */
const UNMOUNT_COMMAND_TIMEOUT_MS = 30_000;
/** A mount point can hold several stacked stale mounts; give up after this many lazy unmounts. */
const FORCE_UNMOUNT_MAX_LAYERS = 8;
/**
 * How long a busy unmount is retried: an auto-clearing loop device (`mount -o loop`, or `losetup -d`
 * while it was still open) releases its backing file from a kernel work item, just after umount returns.
 */
const DEFAULT_BUSY_WAIT_MS = 2_000;
const BUSY_RETRY_INTERVAL_MS = 100;
/** Where the fusectl filesystem lists FUSE connections by device minor. */
const FUSECTL_DIR = '/sys/fs/fuse/connections';

/** The unmount failed because files on the mount are still in use (e.g. a loop device on a FUSE file). */
export class FuseBusyError extends Error {
  override name = 'FuseBusyError';
}

interface CommandResult {
  ok: boolean;
  detail: string;
}

function run(command: string, args: string[]): Promise<CommandResult> {
  return new Promise((res) => {
    execFile(command, args, { timeout: UNMOUNT_COMMAND_TIMEOUT_MS, encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }, (err, _stdout, stderr) => {
      if (!err) return res({ ok: true, detail: '' });
      const detail = (stderr || err.message).trim().split('\n').pop() ?? '';
      res({ ok: false, detail });
    });
  });
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function escapeMountPath(path: string): string {
  return path.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

interface MountEntry {
  /** "major:minor" of the mounted filesystem. */
  device: string;
  type: string;
}

/** What is mounted at `path` (innermost last), from /proc/self/mountinfo. */
async function mountsAt(path: string): Promise<MountEntry[]> {
  const wanted = escapeMountPath(resolve(path));
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const entries: MountEntry[] = [];
  for (const line of info.split('\n')) {
    const fields = line.split(' ');
    if (fields[4] !== wanted) continue;
    const dash = fields.indexOf('-');
    if (dash > 0 && fields[dash + 1] !== undefined) entries.push({ device: fields[2] ?? '', type: fields[dash + 1]! });
  }
  return entries;
}

export function isFuseType(type: string): boolean {
  return type === 'fuse' || type.startsWith('fuse.');
}

/** Filesystem types mounted at `path` (innermost last). */
export async function mountTypesAt(path: string): Promise<string[]> {
  return (await mountsAt(path)).map((m) => m.type);
}

/** "major:minor" of the innermost mount at `path`, or undefined when nothing is mounted there. */
export async function mountDeviceAt(path: string): Promise<string | undefined> {
  return (await mountsAt(path)).pop()?.device;
}

export async function isMountpoint(path: string): Promise<boolean> {
  return (await mountsAt(path)).length > 0;
}

/**
 * Aborts the FUSE connection of device "0:<minor>": pending and future requests fail with ENOTCONN and
 * blocked readers return. Mounts fusectl when it is not mounted yet. False when it could not be done.
 */
async function abortFuseConnection(device: string): Promise<boolean> {
  const minor = /^\d+:(\d+)$/.exec(device)?.[1];
  if (minor === undefined) return false;
  const abortFile = `${FUSECTL_DIR}/${minor}/abort`;
  const exists = (): Promise<boolean> => access(abortFile).then(() => true, () => false);
  if (!(await exists())) {
    await run('mount', ['-t', 'fusectl', 'fusectl', FUSECTL_DIR]);
    if (!(await exists())) return false;
  }
  return writeFile(abortFile, '1\n').then(() => true, () => false);
}

export interface UnmountOptions {
  /** Keep retrying while busy for this long before throwing FuseBusyError. */
  busyWaitMs?: number;
}

/** One non-lazy attempt: 'busy', or throws for other failures. */
async function unmountOnce(mnt: string): Promise<'done' | { busy: string }> {
  const first = await run('fusermount', ['-u', '--', mnt]);
  if (first.ok || !(await isMountpoint(mnt))) return 'done';
  if (/busy/i.test(first.detail)) return { busy: first.detail };
  // fusermount can refuse mounts it did not make (no mtab entry); root can use umount.
  const second = await run('umount', ['--', mnt]);
  if (second.ok || !(await isMountpoint(mnt))) return 'done';
  if (/busy/i.test(second.detail)) return { busy: second.detail };
  throw new Error(`unmounting FUSE ${mnt} failed: fusermount: ${first.detail}; umount: ${second.detail}`);
}

/**
 * Unmounts the FUSE filesystem at `mountpoint`, not lazily: while something still uses it (an open file,
 * a loop device) it retries for `busyWaitMs`, then throws FuseBusyError and leaves it mounted and
 * served. Not mounted is not an error.
 */
export async function unmountFuse(mountpoint: string, options: UnmountOptions = {}): Promise<void> {
  const mnt = resolve(mountpoint);
  const deadline = Date.now() + (options.busyWaitMs ?? DEFAULT_BUSY_WAIT_MS);
  for (;;) {
    if (!(await isMountpoint(mnt))) return;
    const result = await unmountOnce(mnt);
    if (result === 'done') return;
    if (Date.now() >= deadline) {
      throw new FuseBusyError(`unmounting FUSE ${mnt}: busy (${result.busy}); detach loop devices and close its files first`);
    }
    await new Promise((r) => setTimeout(r, BUSY_RETRY_INTERVAL_MS));
  }
}

/**
 * For mounts left by a crashed server: aborts the FUSE connection (so nothing waits on it any more; a
 * server that is still alive loses the mount too), then detaches the mount lazily (`fusermount -u -z`,
 * else `umount -l`); repeats for stacked mounts. Not mounted is not an error. Files still open on it
 * fail with ENOTCONN until closed.
 */
export async function forceUnmountFuse(mountpoint: string): Promise<void> {
  const mnt = resolve(mountpoint);
  const failures: string[] = [];
  for (let layer = 0; layer < FORCE_UNMOUNT_MAX_LAYERS; layer++) {
    const top = (await mountsAt(mnt)).pop();
    if (!top) return;
    if (isFuseType(top.type)) await abortFuseConnection(top.device);
    const viaFusermount = await run('fusermount', ['-u', '-z', '--', mnt]);
    if (viaFusermount.ok) continue;
    const viaUmount = await run('umount', ['-l', '--', mnt]);
    if (viaUmount.ok) continue;
    failures.push(`fusermount -u -z: ${viaFusermount.detail}; umount -l: ${viaUmount.detail}`);
    break;
  }
  if (await isMountpoint(mnt)) {
    throw new Error(`force-unmounting ${mnt} failed: ${failures.join(' | ') || `still mounted after ${FORCE_UNMOUNT_MAX_LAYERS} lazy unmounts`}`);
  }
}

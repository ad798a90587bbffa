// Test helper: loop-mounts EROFS images and stacks read-only overlays, with cleanup (unmount, detach the
// loop device, remove directories) registered on the test context, even when the test fails.
//
// Cleanup order: node:test runs t.after hooks in registration order, so a tempDir(t) made before a mount
// would be removed (rm -rf) while the mount is still there, and fail on the read-only filesystem. To be
// independent of that order, each mount is made on a private directory under the OS temp dir, and
// `mountpoint` becomes a symlink to it: removing the caller's temp dir just removes the symlink, and
// this module's own hook (one per test, undoing mounts last-first) unmounts and cleans up. Paths through
// the symlink work as usual (overlay lowerdirs, snapshotTree); `lstat(mountpoint)` shows a symlink.
import { execFile } from 'node:child_process';
import { lstat, mkdir, mkdtemp, readFile, readdir, realpath, rm, rmdir, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join, resolve } from 'node:path';

export interface AfterHost {
  after(fn: () => unknown): void;
}

const PRIVATE_PREFIX = 'erofs-lazy-mnt-';
const UMOUNT_ATTEMPTS = 5;
const UMOUNT_RETRY_MS = 200;

type Cleanup = () => Promise<void>;
const stacks = new WeakMap<object, Cleanup[]>();

function sh(cmd: string, args: string[]): Promise<string> {
  return new Promise((res, rej) => {
    execFile(cmd, args, { encoding: 'utf8', env: { ...process.env, LC_ALL: 'C' } }, (err, stdout, stderr) => {
      if (err) rej(new Error(`${cmd} ${args.join(' ')}: ${stderr.trim() || err.message}`));
      else res(stdout);
    });
  });
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

/** The cleanup stack of a test; its hook is registered on first use and runs the stack last-first. */
function cleanupStack(t: AfterHost): Cleanup[] {
  let stack = stacks.get(t);
  if (!stack) {
    const s: Cleanup[] = [];
    stack = s;
    stacks.set(t, s);
    t.after(async () => {
      const errors: unknown[] = [];
      while (s.length > 0) {
        try {
          await s.pop()!();
        } catch (err) {
          errors.push(err);
        }
      }
      if (errors.length === 1) throw errors[0];
      if (errors.length > 1) throw new AggregateError(errors, 'mount cleanup failed');
    });
  }
  return stack;
}

interface MountInfo {
  mountpoint: string;
  fstype: string;
  source: string;
}

function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8)));
}

async function mountTable(): Promise<MountInfo[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8');
  const out: MountInfo[] = [];
  for (const line of text.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 0) continue;
    out.push({ mountpoint: unescapeMountField(fields[4]!), fstype: fields[dash + 1]!, source: unescapeMountField(fields[dash + 2]!) });
  }
  return out;
}

async function isMounted(path: string): Promise<boolean> {
  return (await mountTable()).some((m) => m.mountpoint === path);
}

async function unmount(path: string): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    if (!(await isMounted(path))) return;
    try {
      await sh('umount', [path]);
      return;
    } catch (err) {
      if (attempt >= UMOUNT_ATTEMPTS) {
        // Do not leave it in the mount table; report the problem anyway.
        await sh('umount', ['-l', path]).catch(() => undefined);
        throw err;
      }
      await delay(UMOUNT_RETRY_MS);
    }
  }
}

/** Loop devices currently backed by `image` (by `losetup -j`). */
async function loopDevicesOf(image: string): Promise<string[]> {
  const out = await sh('losetup', ['-j', image]).catch(() => '');
  return out
    .split('\n')
    .map((l) => l.slice(0, l.indexOf(':')))
    .filter((d) => d.startsWith('/dev/loop'));
}

/** Whether /dev/loopN is still attached to `image` (its backing file may have been deleted since). */
async function loopBackedBy(device: string, image: string): Promise<boolean> {
  try {
    const backing = (await readFile(`/sys/block/${basename(device)}/loop/backing_file`, 'utf8')).trim();
    return backing === image || backing === `${image} (deleted)`;
  } catch {
    return false;
  }
}

/**
 * Makes `mountpoint` (missing, or an empty directory) a symlink to a new private directory, and returns
 * the private mount directory. Its removal is pushed on the stack.
 */
async function preparePrivate(mountpoint: string, stack: Cleanup[]): Promise<{ base: string; mnt: string }> {
  const target = resolve(mountpoint);
  const st = await lstat(target).catch(() => undefined);
  if (st?.isDirectory()) {
    if ((await readdir(target)).length > 0) throw new Error(`mountpoint ${target} is not empty`);
    await rmdir(target);
  } else if (st) {
    throw new Error(`mountpoint ${target} exists and is not a directory`);
  }
  const base = await mkdtemp(join(tmpdir(), PRIVATE_PREFIX));
  stack.push(async () => {
    await rm(base, { recursive: true, force: true });
  });
  const mnt = join(base, 'mnt');
  await mkdir(mnt);
  await mkdir(join(target, '..'), { recursive: true });
  await symlink(mnt, target);
  return { base, mnt };
}

/**
 * `mount -t erofs -o ro,loop IMAGE` on `mountpoint` (see the header: it becomes a symlink to the real
 * mount). Returns the real mount directory.
 */
export async function mountErofs(imagePath: string, mountpoint: string, t: AfterHost): Promise<string> {
  const stack = cleanupStack(t);
  const image = await realpath(imagePath);
  const { mnt } = await preparePrivate(mountpoint, stack);
  let devices: string[] = [];
  stack.push(async () => {
    await unmount(mnt);
    // mount(8) sets loop devices up with autoclear; detach explicitly if one is still attached.
    for (const dev of new Set([...devices, ...(await loopDevicesOf(image))])) {
      if (await loopBackedBy(dev, image)) {
        const inUse = (await mountTable()).some((m) => m.source === dev);
        if (!inUse) await sh('losetup', ['-d', dev]);
      }
    }
  });
  await sh('mount', ['-t', 'erofs', '-o', 'ro,loop', image, mnt]);
  const entry = (await mountTable()).find((m) => m.mountpoint === mnt);
  devices = entry?.source.startsWith('/dev/loop') ? [entry.source] : await loopDevicesOf(image);
  return mnt;
}

/**
 * A read-only overlay of `lowerdirsTopFirst` (leftmost is the top layer, as overlayfs wants; reverse an
 * OCI manifest's bottom-first list) on `mountpoint` (see the header). One layer is fine: an empty
 * directory is added below it. Returns the real mount directory.
 */
export async function mountOverlay(lowerdirsTopFirst: string[], mountpoint: string, t: AfterHost): Promise<string> {
  if (lowerdirsTopFirst.length === 0) throw new Error('mountOverlay: no lower directories');
  const stack = cleanupStack(t);
  const lowers = await Promise.all(lowerdirsTopFirst.map((d) => realpath(d)));
  const { base, mnt } = await preparePrivate(mountpoint, stack);
  if (lowers.length === 1) {
    const empty = join(base, 'empty');
    await mkdir(empty);
    lowers.push(empty);
  }
  for (const d of lowers) {
    if (/[:,\\]/.test(d)) throw new Error(`mountOverlay: unsupported character in lower directory ${d}`);
  }
  stack.push(() => unmount(mnt));
  await sh('mount', ['-t', 'overlay', 'overlay', '-o', `ro,lowerdir=${lowers.join(':')}`, mnt]);
  return mnt;
}

// Kernel-facing mount steps of the snapshotter on top of src/mount/system.ts: bind mounts, unmounts that
// fall back to a lazy detach when something (a running container's overlay) still uses the mount, and the
// start-up sweep that removes what a crashed serve left under its root: bind, erofs and overlay mounts,
// loop devices whose backing file is below the root, and dead FUSE mounts (aborted and detached).
import { forceUnmountFuse, isFuseMountpoint } from '../fuse/index.js';
import { detachLoop, runCommand, SystemCommandError } from '../mount/system.js';
import { errorMessage } from './errors.js';
import { isMounted, mountsBelow } from './mountinfo.js';

/** How long an unmount keeps retrying "busy" before it detaches lazily (auto-clear loops free files late). */
const BUSY_RETRY_MS = 1_000;
const BUSY_RETRY_INTERVAL_MS = 100;

export async function bindMount(source: string, target: string): Promise<void> {
  await runCommand('mount', ['--bind', source, target], `bind-mounting ${source} on ${target}`);
}

/**
 * Unmounts `path` (not mounted is fine). While busy it retries briefly, then detaches lazily: the mount
 * leaves the namespace at once and the kernel frees it when its last user goes. Returns how it ended.
 */
export async function unmountPath(path: string): Promise<'not-mounted' | 'unmounted' | 'detached'> {
  if (!(await isMounted(path))) return 'not-mounted';
  const deadline = Date.now() + BUSY_RETRY_MS;
  for (;;) {
    try {
      await runCommand('umount', [path], `unmounting ${path}`);
      return 'unmounted';
    } catch (err) {
      if (!(await isMounted(path))) return 'unmounted';
      if (!(err instanceof SystemCommandError && err.busy)) throw err;
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, BUSY_RETRY_INTERVAL_MS));
    }
  }
  await runCommand('umount', ['-l', path], `detaching ${path}`);
  return 'detached';
}

/** Loop devices whose backing file lies below `dir`. */
export async function loopDevicesBelow(dir: string): Promise<Array<{ device: string; file: string }>> {
  let out: string;
  try {
    out = await runCommand('losetup', ['--noheadings', '--raw', '--output', 'NAME,BACK-FILE', '--list'], 'listing loop devices');
  } catch {
    return [];
  }
  const prefix = dir.endsWith('/') ? dir : `${dir}/`;
  return out
    .split('\n')
    .map((line) => {
      const space = line.indexOf(' ');
      return space < 0 ? undefined : { device: line.slice(0, space).trim(), file: line.slice(space + 1).trim() };
    })
    .filter((e): e is { device: string; file: string } => e !== undefined && e.file.startsWith(prefix));
}

function isAtOrBelowAny(path: string, dirs: readonly string[]): boolean {
  return dirs.some((d) => path === d || path.startsWith(`${d}/`));
}

/**
 * Removes every mount and loop device a previous serve left below `root` (newest mounts first, FUSE mounts
 * last so that nothing reading through them blocks), except those at or below `keep` (layers a live FUSE
 * manager still serves). Returns one line per thing removed; failures are reported through `log` and do
 * not stop the sweep.
 */
export async function sweepStaleMounts(root: string, log: (line: string) => void, keep: readonly string[] = []): Promise<string[]> {
  const done: string[] = [];
  const mounts = (await mountsBelow(root)).reverse().filter((m) => !isAtOrBelowAny(m.mountpoint, keep));
  const loops = (await loopDevicesBelow(root)).filter((l) => !isAtOrBelowAny(l.file, keep));
  for (const m of mounts) {
    if (m.type === 'fuse' || m.type.startsWith('fuse.')) continue;
    try {
      const how = await unmountPath(m.mountpoint);
      if (how !== 'not-mounted') done.push(`${how} ${m.type} ${m.mountpoint}`);
    } catch (err) {
      log(`stale mount ${m.mountpoint} (${m.type}) could not be removed: ${errorMessage(err)}`);
    }
  }
  for (const l of loops) {
    try {
      await detachLoop(l.device);
      done.push(`detached loop device ${l.device} (${l.file})`);
    } catch (err) {
      log(`stale loop device ${l.device} (${l.file}) could not be detached: ${errorMessage(err)}`);
    }
  }
  for (const m of mounts) {
    if (!(m.type === 'fuse' || m.type.startsWith('fuse.'))) continue;
    try {
      if (!(await isFuseMountpoint(m.mountpoint))) continue;
      await forceUnmountFuse(m.mountpoint);
      done.push(`detached FUSE ${m.mountpoint}`);
    } catch (err) {
      log(`stale FUSE mount ${m.mountpoint} could not be removed: ${errorMessage(err)}`);
    }
  }
  return done;
}

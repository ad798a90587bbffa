// Undoes a mount in the right order: the mount point (overlay or single erofs), each layer's erofs mount
// and loop device, the serving process, the FUSE mount, then the private directory. A busy mount point
// stops the teardown before anything changes, so a later `umount` can finish it.
import { readFile, rm } from 'node:fs/promises';
import { forceUnmountFuse } from '../fuse/index.js';
import type { MountState } from './state.js';
import { processAlive, writeState } from './state.js';
import { detachLoop, isMountpoint, loopBackingFile, SystemCommandError, unmount } from './system.js';

/** How long the serving process gets to exit after SIGTERM before SIGKILL. */
const SERVER_EXIT_TIMEOUT_MS = 10_000;
const SERVER_EXIT_POLL_MS = 50;

export class MountBusyError extends Error {
  override name = 'MountBusyError';
}

export interface TeardownOptions {
  /** Unmounts the FUSE filesystem from inside the serving process (instead of signalling it). */
  unmountFuse?: () => Promise<void>;
}

async function waitForExit(pid: number, timeoutMs: number): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!processAlive(pid)) return true;
    await new Promise((r) => setTimeout(r, SERVER_EXIT_POLL_MS));
  }
  return !processAlive(pid);
}

/** Mount points at or below `dir` that are still mounted. */
async function mountsBelow(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  return info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined && (p === dir || p.startsWith(`${dir}/`)));
}

export async function teardownMount(state: MountState, options: TeardownOptions = {}): Promise<void> {
  try {
    if (state.top) await unmount(state.mountpoint);
  } catch (err) {
    if (err instanceof SystemCommandError && err.busy) {
      throw new MountBusyError(
        `${state.mountpoint} is busy (files are open or something is mounted below it); close them and run \`erofs-lazy umount ${state.mountpoint}\` again`,
      );
    }
    throw err;
  }
  state.top = undefined;

  for (const layer of [...state.layers].reverse()) {
    if (layer.erofsMountpoint) {
      await unmount(layer.erofsMountpoint);
    }
    if (layer.loopDevice) {
      const backing = await loopBackingFile(layer.loopDevice);
      if (backing !== undefined && backing === layer.file) await detachLoop(layer.loopDevice);
      layer.loopDevice = undefined;
    }
  }
  await writeState(state).catch(() => undefined);

  if (options.unmountFuse) {
    await options.unmountFuse();
  } else if (state.pid && state.pid !== process.pid && processAlive(state.pid)) {
    process.kill(state.pid, 'SIGTERM');
    if (!(await waitForExit(state.pid, SERVER_EXIT_TIMEOUT_MS))) {
      process.kill(state.pid, 'SIGKILL');
      await waitForExit(state.pid, SERVER_EXIT_TIMEOUT_MS);
    }
  }
  if (await isMountpoint(state.fuseMountpoint)) await forceUnmountFuse(state.fuseMountpoint);

  const left = await mountsBelow(state.dir);
  if (left.length > 0) throw new Error(`still mounted, not removing ${state.dir}: ${left.join(', ')}`);
  await rm(state.dir, { recursive: true, force: true });
}

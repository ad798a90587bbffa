// Thin wrappers over the kernel-facing commands a mount needs (losetup, mount, umount), each failing with
// one clear line that names the command and the object, and telling "busy" apart from other failures.
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';

/** How long one system command may take before it is treated as hung. */
const COMMAND_TIMEOUT_MS = 30_000;

export class SystemCommandError extends Error {
  override name = 'SystemCommandError';
  constructor(
    message: string,
    readonly command: string,
    readonly stderr: string,
    /** The target was busy (open files, a mount on top): the caller may retry later. */
    readonly busy: boolean,
  ) {
    super(message);
  }
}

export function runCommand(command: string, args: string[], what: string): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(command, args, { timeout: COMMAND_TIMEOUT_MS, encoding: 'utf8' }, (err, stdout, stderr) => {
      if (!err) return resolve(stdout);
      const detail = (stderr || err.message).trim().split('\n').pop() ?? '';
      const busy = /busy/i.test(stderr);
      reject(new SystemCommandError(`${what}: ${command} failed: ${detail}`, command, stderr, busy));
    });
  });
}

/** Attaches a read-only loop device to `file` and returns its path (/dev/loopN). */
export async function attachLoop(file: string): Promise<string> {
  const out = await runCommand('losetup', ['--read-only', '--find', '--show', file], `loop device for ${file}`);
  const dev = out.trim();
  if (!/^\/dev\/loop\d+$/.test(dev)) throw new Error(`losetup printed ${JSON.stringify(dev)} for ${file}`);
  return dev;
}

/** Detaches a loop device; a device that is already gone is not an error. */
export async function detachLoop(device: string): Promise<void> {
  try {
    await runCommand('losetup', ['--detach', device], `detaching ${device}`);
  } catch (err) {
    if (err instanceof SystemCommandError && /No such device|No such file|not.*configured/i.test(err.stderr)) return;
    throw err;
  }
}

/** The file a loop device is attached to, or undefined when the device is free. */
export async function loopBackingFile(device: string): Promise<string | undefined> {
  try {
    const out = await runCommand('losetup', ['--noheadings', '--output', 'BACK-FILE', device], `querying ${device}`);
    return out.trim() || undefined;
  } catch {
    return undefined;
  }
}

export async function mountErofs(device: string, target: string): Promise<void> {
  await runCommand('mount', ['-t', 'erofs', '-o', 'ro', device, target], `mounting erofs ${device} on ${target}`);
}

/** Stacks read-only lower dirs (top layer first) with overlayfs, optionally with a writable upper dir. */
export async function mountOverlay(lowerTopFirst: string[], target: string, rw?: { upper: string; work: string }): Promise<void> {
  const opts = [`lowerdir=${lowerTopFirst.join(':')}`];
  if (rw) opts.push(`upperdir=${rw.upper}`, `workdir=${rw.work}`);
  else opts.unshift('ro');
  await runCommand('mount', ['-t', 'overlay', 'overlay', '-o', opts.join(','), target], `mounting overlay on ${target}`);
}

/** Unmounts `target`; not mounted is not an error; busy raises SystemCommandError with busy = true. */
export async function unmount(target: string): Promise<void> {
  if (!(await isMountpoint(target))) return;
  await runCommand('umount', [target], `unmounting ${target}`);
}

/** Whether a path is currently a mount point, from /proc/self/mountinfo. */
export async function isMountpoint(path: string): Promise<boolean> {
  const info = await readFile('/proc/self/mountinfo', 'utf8');
  const wanted = escapeMountPath(path);
  return info.split('\n').some((line) => line.split(' ')[4] === wanted);
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function escapeMountPath(path: string): string {
  return path.replace(/[ \t\n\\]/g, (c) => `\\${c.charCodeAt(0).toString(8).padStart(3, '0')}`);
}

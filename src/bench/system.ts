// System helpers of the cold-start benchmark: dropping the page cache, loop/erofs/overlay mounts of local
// images, the peak memory (VmHWM) of a process, and the description of the machine a result came from.
import { execFile, execFileSync, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
const MOUNT_TIMEOUT_MS = 60_000;

export function dropCaches(): void {
  execFileSync('sync');
  execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

/** Peak resident set size (VmHWM) of a live process in bytes, or null when it cannot be read. */
export function peakRssBytes(pid: number): number | null {
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

export async function sysMount(args: string[]): Promise<void> {
  try {
    await run('mount', args, { timeout: MOUNT_TIMEOUT_MS });
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`mount ${args.join(' ')} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

export async function sysUmount(target: string): Promise<void> {
  try {
    await run('umount', [target], { timeout: MOUNT_TIMEOUT_MS });
  } catch (err) {
    // A lazy detach still frees the loop device once the last user goes; never leave a mount behind.
    await run('umount', ['-l', target], { timeout: MOUNT_TIMEOUT_MS }).catch(() => undefined);
    const e = err as Error & { stderr?: string };
    throw new Error(`umount ${target} failed: ${(e.stderr ?? e.message).trim()}`);
  }
}

/**
 * Mounts layer trees (bottom first) read-only at `target`: one tree is bind-mounted, several are
 * stacked with overlayfs. Answers the mounts to undo, innermost last.
 */
export async function mountTrees(lowers: string[], target: string): Promise<string[]> {
  await mkdir(target, { recursive: true });
  if (lowers.length === 1) {
    await sysMount(['--bind', '-o', 'ro', lowers[0]!, target]);
  } else {
    await sysMount(['-t', 'overlay', 'overlay', '-o', `lowerdir=${[...lowers].reverse().join(':')}`, target]);
  }
  return [target];
}

/** Loop-mounts raw EROFS images (bottom first) read-only and stacks them at `target`. Answers mounts to undo, outermost first. */
export async function mountRawImages(images: string[], scratch: string, target: string): Promise<string[]> {
  if (images.length === 1) {
    await mkdir(target, { recursive: true });
    await sysMount(['-t', 'erofs', '-o', 'ro,loop', images[0]!, target]);
    return [target];
  }
  const layers: string[] = [];
  const undo: string[] = [];
  try {
    for (const [i, img] of images.entries()) {
      const dir = join(scratch, `erofs-${i}`);
      await mkdir(dir, { recursive: true });
      await sysMount(['-t', 'erofs', '-o', 'ro,loop', img, dir]);
      layers.push(dir);
      undo.unshift(dir);
    }
    await mountTrees(layers, target);
    undo.unshift(target);
    return undo;
  } catch (err) {
    await unmountAll(undo);
    throw err;
  }
}

/** Unmounts in the given order, trying every one; throws the first failure at the end. */
export async function unmountAll(targets: string[]): Promise<void> {
  let first: unknown;
  for (const t of targets) await sysUmount(t).catch((e: unknown) => (first ??= e));
  if (first) throw first;
}

/** Lazily detaches every mount at or below `dir` (deepest first), so that removing `dir` cannot reach into a mount. */
export async function releaseMountsBelow(dir: string): Promise<void> {
  const mounts = readFileSync('/proc/self/mounts', 'utf8')
    .split('\n')
    .map((l) => l.split(' ')[1]?.replace(/\\040/g, ' '))
    .filter((m): m is string => m !== undefined && (m === dir || m.startsWith(`${dir}/`)))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) await run('umount', ['-l', m], { timeout: MOUNT_TIMEOUT_MS }).catch(() => undefined);
}

export interface MachineInfo {
  cpuModel: string;
  cores: number;
  memoryGiB: number;
  kernel: string;
  node: string;
  /** Block device of the bench work dir, its size and whether it is rotational. */
  disk: string;
  os: string;
}

function tryRead(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return '';
  }
}

export function describeMachine(workDir: string): MachineInfo {
  const source = tryRead('findmnt', ['-no', 'SOURCE', '-T', workDir]) || 'unknown';
  const dev = source.replace(/^\/dev\//, '').replace(/\[.*$/, '');
  const lsblk = tryRead('lsblk', ['-dno', 'SIZE,ROTA,MODEL', `/dev/${dev}`]).split(/\s+/);
  const fstype = tryRead('findmnt', ['-no', 'FSTYPE', '-T', workDir]);
  const disk = lsblk[0]
    ? `${source} (${fstype || 'unknown fs'}, ${lsblk[0]}, ${lsblk[1] === '1' ? 'rotational' : 'non-rotational'}${lsblk.slice(2).join(' ') ? `, ${lsblk.slice(2).join(' ')}` : ''})`
    : source;
  const osRelease = /^PRETTY_NAME="?([^"\n]*)"?$/m.exec(tryRead('cat', ['/etc/os-release']))?.[1] ?? 'unknown';
  return {
    cpuModel: cpus()[0]?.model ?? 'unknown',
    cores: cpus().length,
    memoryGiB: Math.round((totalmem() / 1024 ** 3) * 10) / 10,
    kernel: tryRead('uname', ['-r']),
    node: process.version,
    disk,
    os: osRelease,
  };
}

export function loadAverage(): number[] {
  return loadavg().map((x) => Math.round(x * 100) / 100);
}

/** Spawns a command (with `env` instead of ours when given); resolves with its exit code and output tails. */
export function spawnCollect(
  cmd: string,
  args: string[],
  timeoutMs: number,
  env?: NodeJS.ProcessEnv,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(env ? { env } : {}) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout = (stdout + d.toString()).slice(-64 * 1024)));
    child.stderr.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-64 * 1024)));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr });
    });
  });
}

// Test helper: temp dirs that are removed when the test ends, even when it fails. Anything still
// mounted below the dir (and loop devices backed by files in it) is released first, deepest first,
// so a failed test never leaves mounts behind nor makes rm fail on a read-only mount.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

function loopDevicesBelow(dir: string): string[] {
  let loops = '';
  try {
    loops = execFileSync('losetup', ['--noheadings', '--output', 'NAME,BACK-FILE', '--list'], { encoding: 'utf8' });
  } catch {
    return [];
  }
  return loops
    .split('\n')
    .map((line) => line.trim().split(/\s+/, 2))
    .filter(([dev, file]) => dev && file && file.startsWith(`${dir}/`))
    .map(([dev]) => dev!);
}

/**
 * Unmounts every mount at or below `dir` (newest first, as mountinfo lists them oldest first) and detaches
 * the loop devices whose backing file is below it (found before the unmounts hide their paths).
 */
export function releaseMountsBelow(dir: string): void {
  const loops = loopDevicesBelow(dir);
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath)
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .reverse();
  for (const m of mounts) {
    try {
      execFileSync('umount', [m], { stdio: 'ignore' });
    } catch {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    }
  }
  for (const dev of loops) {
    try {
      execFileSync('losetup', ['--detach', dev], { stdio: 'ignore' });
    } catch {
      // Already gone.
    }
  }
}

/**
 * A fresh temp dir, removed after the test. `beforeRemove` runs first (e.g. a clean unmount that the
 * test wants to happen before the forced release of whatever is still mounted).
 */
export async function tempDir(
  t: TestContext | { after(fn: () => unknown): void },
  prefix = 'erofs-lazy-test-',
  beforeRemove?: (dir: string) => Promise<unknown>,
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(async () => {
    if (beforeRemove) await beforeRemove(dir).catch(() => undefined);
    releaseMountsBelow(dir);
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

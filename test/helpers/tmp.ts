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

/** Unmounts every mount at or below `dir` and detaches loop devices whose backing file is below it. */
export function releaseMountsBelow(dir: string): void {
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath)
    .filter((p) => p === dir || p.startsWith(`${dir}/`))
    .sort((a, b) => b.length - a.length);
  for (const m of mounts) {
    try {
      execFileSync('umount', [m], { stdio: 'ignore' });
    } catch {
      execFileSync('umount', ['-l', m], { stdio: 'ignore' });
    }
  }
  let loops = '';
  try {
    loops = execFileSync('losetup', ['--noheadings', '--output', 'NAME,BACK-FILE', '--list'], { encoding: 'utf8' });
  } catch {
    return;
  }
  for (const line of loops.split('\n')) {
    const [dev, file] = line.trim().split(/\s+/, 2);
    if (dev && file && file.startsWith(`${dir}/`)) {
      try {
        execFileSync('losetup', ['--detach', dev], { stdio: 'ignore' });
      } catch {
        // Already gone.
      }
    }
  }
}

export async function tempDir(t: TestContext | { after(fn: () => unknown): void }, prefix = 'erofs-lazy-test-'): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  t.after(async () => {
    releaseMountsBelow(dir);
    await rm(dir, { recursive: true, force: true });
  });
  return dir;
}

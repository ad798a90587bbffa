// `erofs-lazy mount` driven through the CLI for tests: mounts with its own state and cache dirs, reads stats,
// unmounts, and checks that nothing (mount, loop device, serving process) is left behind, even when a test
// fails half-way.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import type { MountStats } from '../../src/mount/stats.js';
import { CLI_PATH, runCli } from './cli.js';
import { tempDir } from './tmp.js';

export interface MountHandle {
  mountpoint: string;
  stateDir: string;
  cacheDir: string;
  stats(): Promise<MountStats>;
  umount(): Promise<void>;
}

/** Nothing of the mount may remain: no FUSE/erofs/overlay mount under the dirs, no loop device, no process. */
export async function assertNothingLeft(dirs: string[]): Promise<void> {
  const mountinfo = await readFile('/proc/self/mountinfo', 'utf8');
  const points = mountinfo.split('\n').map((l) => l.split(' ')[4] ?? '');
  for (const d of dirs) {
    assert.deepEqual(points.filter((p) => p === d || p.startsWith(`${d}/`)), [], `mounts left under ${d}`);
  }
  const loops = execFileSync('losetup', ['--noheadings', '--output', 'BACK-FILE', '--list'], { encoding: 'utf8' });
  for (const d of dirs) assert.ok(!loops.split('\n').some((f) => f.trim().startsWith(`${d}/`)), `loop devices left for ${d}: ${loops}`);
  const ps = execFileSync('ps', ['-eo', 'pid,args'], { encoding: 'utf8' });
  for (const d of dirs) assert.ok(!ps.split('\n').some((l) => l.includes('erofs-lazy') && l.includes(d)), `process left for ${d}`);
}

/** PIDs recorded in the mount state records under `stateDir`. */
export async function recordedPids(stateDir: string): Promise<number[]> {
  const root = join(stateDir, 'mounts');
  const ids = await readdir(root).catch(() => [] as string[]);
  const pids: number[] = [];
  for (const id of ids) {
    const state = await readFile(join(root, id, 'state.json'), 'utf8').then((t) => JSON.parse(t) as { pid?: number }, () => undefined);
    if (typeof state?.pid === 'number') pids.push(state.pid);
  }
  return pids;
}

/** Kills `pid` only if it is still a serving process of this CLI for `stateDir` (never a reused PID). */
export async function killMountProcess(pid: number, stateDir: string): Promise<void> {
  const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  if (cmdline.includes(CLI_PATH) && cmdline.includes(stateDir)) process.kill(pid, 'SIGKILL');
}

export async function mountImage(t: TestContext, ref: string, extra: string[] = [], dirs?: { stateDir?: string; cacheDir?: string }): Promise<MountHandle> {
  let stateDir = '';
  // A clean `umount --all` first, then anything left is released and killed, so no test leaks a mount
  // or a serving process even when it fails half-way.
  const base = await tempDir(t, 'erofs-lazy-test-', async () => {
    const pids = await recordedPids(stateDir);
    await runCli(['umount', '--all', '--state-dir', stateDir]);
    for (const pid of pids) await killMountProcess(pid, stateDir);
  });
  const mountpoint = join(base, 'mnt');
  stateDir = dirs?.stateDir ?? join(base, 'state');
  const cacheDir = dirs?.cacheDir ?? join(base, 'cache');
  const res = await runCli(['mount', ref, mountpoint, '--state-dir', stateDir, '--cache-dir', cacheDir, ...extra]);
  assert.equal(res.code, 0, `mount failed: ${res.stderr}`);
  const handle: MountHandle = {
    mountpoint,
    stateDir,
    cacheDir,
    async stats() {
      const s = await runCli(['stats', mountpoint, '--state-dir', stateDir, '--json']);
      assert.equal(s.code, 0, s.stderr);
      return JSON.parse(s.stdout) as MountStats;
    },
    async umount() {
      const u = await runCli(['umount', mountpoint, '--state-dir', stateDir]);
      assert.equal(u.code, 0, `umount failed: ${u.stderr}`);
      await assertNothingLeft([base, stateDir]);
    },
  };
  return handle;
}


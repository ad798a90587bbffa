// Workloads of the cold-start benchmark, run against a mounted image tree: a command in a chroot (whose
// output must contain an expected marker), a sequential read of a whole file, and random reads of a
// fixed block size at deterministic offsets. Each answers its duration and the bytes it read.
import { open, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { spawnCollect } from './system.js';

/** PATH inside the image for chroot commands. */
export const WORKLOAD_PATH = '/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin';
export const WORKLOAD_TIMEOUT_MS = 15 * 60_000;
/** Read size of the sequential workload. */
export const SEQUENTIAL_BLOCK_BYTES = 1024 * 1024;

export type Workload =
  | { kind: 'exec'; name: string; description: string; argv: string[]; expect: string }
  | { kind: 'read-seq'; name: string; description: string; path: string }
  | { kind: 'read-random'; name: string; description: string; path: string; blockBytes: number; count: number; seed: number };

export interface WorkloadOutcome {
  ms: number;
  /** Bytes the workload read (read workloads only). */
  bytesRead?: number;
}

/** The clean environment of an exec workload (chroot passes it on to the command). */
export const WORKLOAD_ENV: NodeJS.ProcessEnv = { PATH: WORKLOAD_PATH, HOME: '/root', LANG: 'C.UTF-8' };

/** Deterministic offsets (block-aligned) for random reads over a file of `size` bytes (xorshift32). */
export function randomOffsets(size: number, blockBytes: number, count: number, seed: number): number[] {
  const blocks = Math.floor(size / blockBytes);
  if (blocks < 1) throw new Error(`file of ${size} bytes is smaller than one ${blockBytes}-byte block`);
  let x = seed >>> 0 || 1;
  const out: number[] = [];
  for (let i = 0; i < count; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out.push((x % blocks) * blockBytes);
  }
  return out;
}

export async function runWorkload(root: string, w: Workload): Promise<WorkloadOutcome> {
  switch (w.kind) {
    case 'exec': {
      const started = performance.now();
      const r = await spawnCollect('chroot', [root, ...w.argv], WORKLOAD_TIMEOUT_MS, WORKLOAD_ENV);
      const ms = performance.now() - started;
      if (r.code !== 0 || !r.stdout.includes(w.expect)) {
        throw new Error(`workload ${w.name} in ${root} failed (exit ${r.code}): ${(r.stderr || r.stdout).trim().split('\n').slice(-3).join(' | ')}`);
      }
      return { ms };
    }
    case 'read-seq': {
      const path = join(root, w.path);
      const size = (await stat(path)).size;
      const started = performance.now();
      const r = await spawnCollect('dd', [`if=${path}`, 'of=/dev/null', `bs=${SEQUENTIAL_BLOCK_BYTES}`], WORKLOAD_TIMEOUT_MS);
      const ms = performance.now() - started;
      if (r.code !== 0) throw new Error(`dd of ${path} failed: ${r.stderr.trim()}`);
      return { ms, bytesRead: size };
    }
    case 'read-random': {
      const path = join(root, w.path);
      const offsets = randomOffsets((await stat(path)).size, w.blockBytes, w.count, w.seed);
      const buf = Buffer.alloc(w.blockBytes);
      const started = performance.now();
      // One read in flight, like an application's dependent lookups; asynchronous, because the throttling
      // proxy of an emulated link runs in this process and must keep serving the mount meanwhile.
      const file = await open(path, 'r');
      let bytes = 0;
      try {
        for (const off of offsets) {
          const { bytesRead } = await file.read(buf, 0, w.blockBytes, off);
          if (bytesRead !== w.blockBytes) throw new Error(`short read of ${path} at ${off}: ${bytesRead} of ${w.blockBytes} bytes`);
          bytes += bytesRead;
        }
      } finally {
        await file.close();
      }
      return { ms: performance.now() - started, bytesRead: bytes };
    }
  }
}

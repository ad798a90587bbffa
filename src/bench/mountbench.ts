// `erofs-lazy bench` (mount throughput): builds an image with one large file and many small ones, pushes
// it to a local registry and converts it, then measures in one run, with the page cache dropped before
// every read: sequential read of the large file from the raw EROFS image loop-mounted from local disk
// (the baseline), through a cold lazy mount, and through a lazy mount with a warm disk cache; and the
// bytes fetched for one small-file read. Medians over several runs and ratios against the baseline.
import { execFile, execFileSync } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, tmpdir, totalmem } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { decodeLayerBlob } from '../chunktable/index.js';
import { openImageStore } from '../fetch/index.js';
import type { MountStats } from '../mount/stats.js';
import { buildImageFromDirs, pseudoRandomBytes } from '../sample/build.js';

const run = promisify(execFile);

export const DEFAULT_BENCH_FILE_MIB = 512;
export const DEFAULT_BENCH_RUNS = 3;
const SMALL_FILE_COUNT = 200;
const SMALL_FILE_BYTES = 8 * 1024;
const READ_BLOCK = '1M';
const MIB = 1024 * 1024;

export interface MountBenchOptions {
  fileMiB: number;
  runs: number;
  chunkSize?: number;
  cliPath: string;
  repoRoot: string;
  outPath?: string;
  log: (line: string) => void;
}

export interface MountBenchResult {
  date: string;
  machine: { cpus: number; cpuModel: string; memoryGiB: number; kernel: string; node: string };
  image: { fileBytes: number; blobBytes: number; imageBytes: number; chunkSize: number | 'default' };
  runs: number;
  sequentialMBps: { localLoop: number[]; lazyCold: number[]; lazyWarmDisk: number[] };
  median: { localLoop: number; lazyCold: number; lazyWarmDisk: number };
  ratios: { coldVsLocal: number; warmVsLocal: number };
  smallFileRead: { bytesFetched: number; blobBytes: number; fraction: number; requests: number };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

function dropCaches(): void {
  execFileSync('sync');
  execFileSync('sh', ['-c', 'echo 3 > /proc/sys/vm/drop_caches']);
}

/** Reads a file sequentially with dd and returns MB/s (10^6 bytes per second). */
async function ddRead(path: string, bytes: number): Promise<number> {
  const started = process.hrtime.bigint();
  await run('dd', [`if=${path}`, 'of=/dev/null', `bs=${READ_BLOCK}`], { maxBuffer: 1 << 20 });
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  return bytes / 1e6 / seconds;
}

export async function runMountBench(options: MountBenchOptions): Promise<MountBenchResult> {
  const { log } = options;
  const work = await mkdtemp(join(tmpdir(), 'erofs-lazy-bench-'));
  const registryDir = join(work, 'registry');
  const cli = (args: string[]) => run(process.execPath, [options.cliPath, ...args], { maxBuffer: 64 * MIB });
  try {
    const host = (await run(join(options.repoRoot, 'scripts/registry'), ['start', '--dir', registryDir, '--port', '0'])).stdout.trim();
    log(`registry at ${host}; building a ${options.fileMiB} MiB file image`);
    const src = join(work, 'rootfs');
    await mkdir(join(src, 'small'), { recursive: true });
    const fileBytes = options.fileMiB * MIB;
    const out = createWriteStream(join(src, 'big.bin'));
    for (let off = 0; off < fileBytes; off += 16 * MIB) {
      const piece = pseudoRandomBytes(Math.min(16 * MIB, fileBytes - off), `bench-${off}`);
      if (!out.write(piece)) await new Promise<void>((r) => out.once('drain', () => r()));
    }
    await new Promise<void>((r, j) => out.end((e?: Error | null) => (e ? j(e) : r())));
    for (let i = 0; i < SMALL_FILE_COUNT; i++) await writeFile(join(src, 'small', `f${i}`), pseudoRandomBytes(SMALL_FILE_BYTES, `small-${i}`));

    const plain = `${host}/bench/big:plain`;
    const seekable = `${host}/bench/big:seekable`;
    const store = openImageStore(plain, {});
    await buildImageFromDirs(store, [src], { workDir: work });
    await store.close();
    await rm(src, { recursive: true, force: true });
    await cli(['convert', plain, seekable, ...(options.chunkSize ? ['--chunk-size', String(options.chunkSize)] : [])]);

    // Baseline: the same raw EROFS image, decoded to local disk and loop-mounted.
    const seekStore = openImageStore(seekable, {});
    const resolved = await seekStore.resolve();
    const layer = resolved.manifest.layers[0]!;
    const rawPath = join(work, 'layer.erofs');
    await decodeLayerBlob(await seekStore.openBlob(layer), rawPath, layer);
    await seekStore.close();
    const localMnt = join(work, 'local');
    await mkdir(localMnt);
    await run('mount', ['-t', 'erofs', '-o', 'ro,loop', rawPath, localMnt]);
    const localLoop: number[] = [];
    try {
      for (let r = 0; r < options.runs; r++) {
        dropCaches();
        localLoop.push(await ddRead(join(localMnt, 'big.bin'), fileBytes));
        log(`local loop run ${r + 1}: ${localLoop[r]!.toFixed(0)} MB/s`);
      }
    } finally {
      await run('umount', [localMnt]);
    }
    const imageBytes = (await stat(rawPath)).size;
    await rm(rawPath, { force: true });

    const stateDir = join(work, 'state');
    const mnt = join(work, 'mnt');
    const mount = (cacheDir: string) => cli(['mount', seekable, mnt, '--state-dir', stateDir, '--cache-dir', cacheDir]);
    const umount = () => cli(['umount', mnt, '--state-dir', stateDir]);
    const stats = async () => JSON.parse((await cli(['stats', mnt, '--state-dir', stateDir, '--json'])).stdout) as MountStats;

    const lazyCold: number[] = [];
    const lazyWarmDisk: number[] = [];
    let small: MountBenchResult['smallFileRead'] | undefined;
    for (let r = 0; r < options.runs; r++) {
      const cacheDir = join(work, `cache-${r}`);
      await mount(cacheDir);
      try {
        if (!small) {
          dropCaches();
          await readFile(join(mnt, 'small/f17'));
          const s = await stats();
          small = { bytesFetched: s.total.bytesFetched, blobBytes: s.total.blobSize, fraction: s.total.bytesFetched / s.total.blobSize, requests: s.total.requests };
          log(`small-file read fetched ${s.total.bytesFetched} of ${s.total.blobSize} blob bytes`);
        }
        dropCaches();
        lazyCold.push(await ddRead(join(mnt, 'big.bin'), fileBytes));
        log(`lazy cold run ${r + 1}: ${lazyCold[r]!.toFixed(0)} MB/s`);
      } finally {
        await umount();
      }
      await mount(cacheDir);
      try {
        dropCaches();
        lazyWarmDisk.push(await ddRead(join(mnt, 'big.bin'), fileBytes));
        const s = await stats();
        log(`lazy warm run ${r + 1}: ${lazyWarmDisk[r]!.toFixed(0)} MB/s (fetched ${s.total.bytesFetched} bytes)`);
      } finally {
        await umount();
      }
      await rm(cacheDir, { recursive: true, force: true });
    }
    const med = { localLoop: median(localLoop), lazyCold: median(lazyCold), lazyWarmDisk: median(lazyWarmDisk) };
    const result: MountBenchResult = {
      date: new Date().toISOString(),
      machine: {
        cpus: cpus().length,
        cpuModel: cpus()[0]?.model ?? 'unknown',
        memoryGiB: Math.round(totalmem() / 1024 ** 3),
        kernel: execFileSync('uname', ['-r'], { encoding: 'utf8' }).trim(),
        node: process.version,
      },
      image: { fileBytes, blobBytes: layer.size, imageBytes, chunkSize: options.chunkSize ?? 'default' },
      runs: options.runs,
      sequentialMBps: { localLoop, lazyCold, lazyWarmDisk },
      median: med,
      ratios: { coldVsLocal: med.lazyCold / med.localLoop, warmVsLocal: med.lazyWarmDisk / med.localLoop },
      smallFileRead: small!,
    };
    if (options.outPath) {
      await mkdir(resolve(options.outPath, '..'), { recursive: true });
      await writeFile(options.outPath, `${JSON.stringify(result, null, 2)}\n`);
    }
    return result;
  } finally {
    await run(join(options.repoRoot, 'scripts/registry'), ['stop', '--dir', registryDir]).catch(() => undefined);
    await rm(work, { recursive: true, force: true });
  }
}

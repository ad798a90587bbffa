// Developer benchmark (not imported by the library): verifies and decodes 4 MiB chunk frames inline on the
// main thread and through the worker DecodePool, and prints throughput and event-loop delay (what FUSE
// requests would wait) for each. Run after building: node dist/src/bench/decodebench.js [chunks] [rounds]
import { createHash, randomBytes } from 'node:crypto';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import zstd from 'zstd-napi/binding.js';
import { parseChunkTable, serializeChunkTable, HASH_ALGO_SHA512 } from '../chunktable/table.js';
import type { ChunkTable } from '../chunktable/table.js';
import { DecodePool, InlineDecoder } from '../reader/decodepool.js';
import type { ChunkDecoder } from '../reader/decodepool.js';

/** The spec's default chunk size. */
const BENCH_CHUNK_SIZE = 4 * 1024 * 1024;
const DEFAULT_BENCH_CHUNKS = 16;
const DEFAULT_BENCH_ROUNDS = 3;
/** zstd level of the frames (the encoder default). */
const BENCH_LEVEL = 3;
/** Event-loop delay histogram resolution. */
const LOOP_DELAY_RESOLUTION_MS = 1;
const NS_PER_MS = 1e6;
const MiB = 1024 * 1024;

/** Semi-compressible content (about 2:1): runs of one byte mixed with random bytes, like a filesystem image. */
function makeChunk(seed: number): Buffer {
  const out = Buffer.alloc(BENCH_CHUNK_SIZE);
  const noise = randomBytes(BENCH_CHUNK_SIZE);
  let i = 0;
  let s = seed;
  while (i < out.length) {
    s = (s * 1103515245 + 12345) >>> 0;
    const run = 1 + (s % 512);
    const noisy = (s >>> 16) % 2 === 0;
    for (let k = 0; k < run && i < out.length; k++, i++) out[i] = noisy ? noise[i]! : s & 0xff;
  }
  return out;
}

function buildFrames(count: number): { frames: Buffer[]; table: ChunkTable; compressed: number } {
  const cctx = new zstd.CCtx();
  cctx.setParameter(zstd.CParameter.compressionLevel, BENCH_LEVEL);
  cctx.setParameter(zstd.CParameter.checksumFlag, 1);
  cctx.setParameter(zstd.CParameter.contentSizeFlag, 1);
  const frames: Buffer[] = [];
  const entries: Array<{ offset: number; checksum: Buffer }> = [];
  let offset = 0;
  for (let i = 0; i < count; i++) {
    const chunk = makeChunk(i + 1);
    const dst = Buffer.allocUnsafe(zstd.compressBound(chunk.length));
    const frame = Buffer.from(dst.subarray(0, cctx.compress2(dst, chunk)));
    frames.push(frame);
    entries.push({ offset, checksum: createHash('sha512').update(frame).digest() });
    offset += frame.length;
  }
  const U = count * BENCH_CHUNK_SIZE;
  const payload = serializeChunkTable({ uncompressedSize: U, chunkSize: BENCH_CHUNK_SIZE, hashAlgo: HASH_ALGO_SHA512, entries });
  const table = parseChunkTable(payload, { tableOffset: offset, blobSize: offset + 8 + payload.length });
  return { frames, table, compressed: offset };
}

interface Result {
  mode: string;
  seconds: number;
  mibPerSecond: number;
  loopDelayMaxMs: number;
  loopDelayP99Ms: number;
  loopDelayMeanMs: number;
  /** Longest wait of a 1 ms timer chain (a stand-in for a FUSE request arriving during the burst). */
  timerLagMaxMs: number;
}

/** Re-arms a 1 ms timer and records how late each one fires. */
function startLagProbe(): () => number {
  let max = 0;
  let expected = performance.now() + LOOP_DELAY_RESOLUTION_MS;
  let timer: NodeJS.Timeout;
  const tick = (): void => {
    const now = performance.now();
    max = Math.max(max, now - expected);
    expected = now + LOOP_DELAY_RESOLUTION_MS;
    timer = setTimeout(tick, LOOP_DELAY_RESOLUTION_MS);
  };
  timer = setTimeout(tick, LOOP_DELAY_RESOLUTION_MS);
  return () => {
    clearTimeout(timer);
    return max;
  };
}

/** Decodes every frame (all submitted at once, as completed fetches would) while watching the event loop. */
async function run(mode: string, decoder: ChunkDecoder, frames: Buffer[], table: ChunkTable): Promise<Result> {
  // Each job gets a fresh copy that owns its buffer, as a fetched range does (the pool may transfer it).
  const inputs = frames.map((f) => Buffer.from(f));
  const histogram = monitorEventLoopDelay({ resolution: LOOP_DELAY_RESOLUTION_MS });
  histogram.enable();
  const stopProbe = startLagProbe();
  // Let the probe and the histogram take a first sample before the burst.
  await new Promise((resolve) => setTimeout(resolve, 3 * LOOP_DELAY_RESOLUTION_MS));
  const started = performance.now();
  const jobs = inputs.map(async (frame, i) => {
    // Yield first, so that inline decoding happens in later turns like completions of real fetches.
    await new Promise((resolve) => setImmediate(resolve));
    return decoder.decode(table, i, frame, '');
  });
  const chunks = await Promise.all(jobs);
  const seconds = (performance.now() - started) / 1000;
  // Let the histogram see one more turn after the burst.
  await new Promise((resolve) => setTimeout(resolve, 2 * LOOP_DELAY_RESOLUTION_MS));
  histogram.disable();
  const timerLagMaxMs = stopProbe();
  const bytes = chunks.reduce((sum, c) => sum + c.length, 0);
  if (bytes !== frames.length * BENCH_CHUNK_SIZE) throw new Error(`${mode}: decoded ${bytes} bytes`);
  return {
    mode,
    seconds,
    mibPerSecond: bytes / MiB / seconds,
    loopDelayMaxMs: histogram.max / NS_PER_MS,
    loopDelayP99Ms: histogram.percentile(99) / NS_PER_MS,
    loopDelayMeanMs: histogram.mean / NS_PER_MS,
    timerLagMaxMs,
  };
}

async function main(): Promise<void> {
  const count = Number(process.argv[2] ?? DEFAULT_BENCH_CHUNKS);
  const rounds = Number(process.argv[3] ?? DEFAULT_BENCH_ROUNDS);
  const { frames, table, compressed } = buildFrames(count);
  console.log(`${count} chunks of 4 MiB, ${(compressed / MiB).toFixed(1)} MiB compressed (ratio ${((count * BENCH_CHUNK_SIZE) / compressed).toFixed(2)})`);
  const inline = new InlineDecoder();
  const pool = new DecodePool();
  console.log(`pool: ${pool.workers} workers`);
  // Warm up: start the workers and JIT both paths.
  await run('warm-up', pool, frames.slice(0, Math.min(frames.length, pool.workers)), table);
  await run('warm-up', inline, frames.slice(0, 1), table);
  const results: Result[] = [];
  for (let r = 0; r < rounds; r++) {
    results.push(await run('inline', inline, frames, table));
    results.push(await run('pool', pool, frames, table));
  }
  for (const x of results) {
    console.log(
      `${x.mode.padEnd(7)} ${x.mibPerSecond.toFixed(0).padStart(6)} MiB/s  event-loop delay max ${x.loopDelayMaxMs.toFixed(1)} ms, p99 ${x.loopDelayP99Ms.toFixed(1)} ms, mean ${x.loopDelayMeanMs.toFixed(2)} ms; 1 ms timer lag max ${x.timerLagMaxMs.toFixed(1)} ms`,
    );
  }
  await pool.close();
}

await main();

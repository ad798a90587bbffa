// Background fetch of the rest of a mount's lazy layers (off by default): once reads have been quiet for a
// while, chunks not yet present are fetched in order, in small batches through the layers' prefetch path (so
// reads keep priority for request slots), paced to a byte rate, and paused whenever a read comes in.
import type { LazyLayer } from '../reader/index.js';

/** Reads must have been quiet this long before (and between) background batches. */
export const DEFAULT_QUIET_MS = 2_000;
/** Default pace of background fetching (compressed bytes per second). */
export const DEFAULT_BACKGROUND_BYTES_PER_SECOND = 32 * 1024 * 1024;
/** Chunks fetched per background batch. */
export const BACKGROUND_BATCH_CHUNKS = 4;
/** How often a paused filler looks again whether reads have gone quiet. */
const QUIET_POLL_MS = 250;

export interface BackgroundFetchOptions {
  bytesPerSecond?: number;
  quietMs?: number;
  log?: (line: string) => void;
}

export interface BackgroundFetchStatus {
  state: 'running' | 'done' | 'failed' | 'stopped';
  /** Chunks fetched (or found) by the filler so far. */
  chunks: number;
  /** Compressed bytes of those chunks. */
  bytes: number;
  /** Times the filler waited for reads to go quiet. */
  pauses: number;
  error?: string;
}

const sleep = (ms: number, signal: AbortSignal): Promise<void> =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(timer), resolve()), { once: true });
  });

/** Fills the layers in the background until done or stopped; `status` is live. */
export class BackgroundFetcher {
  readonly status: BackgroundFetchStatus = { state: 'running', chunks: 0, bytes: 0, pauses: 0 };
  readonly #stop = new AbortController();
  readonly #done: Promise<void>;

  constructor(
    private readonly layers: readonly LazyLayer[],
    private readonly options: BackgroundFetchOptions = {},
  ) {
    const rate = options.bytesPerSecond ?? DEFAULT_BACKGROUND_BYTES_PER_SECOND;
    if (!(rate > 0)) throw new RangeError(`background fetch rate ${rate} must be positive`);
    this.#done = this.#run(rate, options.quietMs ?? DEFAULT_QUIET_MS).then(
      () => {
        if (this.status.state === 'running') this.status.state = 'done';
      },
      (err: unknown) => {
        this.status.state = 'failed';
        this.status.error = err instanceof Error ? err.message : String(err);
        options.log?.(`background fetch failed: ${this.status.error}`);
      },
    );
  }

  /** Stops after the batch in flight; resolves when the filler has ended. */
  async stop(): Promise<void> {
    if (this.status.state === 'running') this.status.state = 'stopped';
    this.#stop.abort();
    await this.#done;
  }

  /** Waits until no layer was read for `quietMs`; true when it had to wait. */
  async #waitQuiet(quietMs: number): Promise<boolean> {
    let paused = false;
    for (;;) {
      const lastRead = Math.max(...this.layers.map((l) => l.lastReadAt));
      const idle = performance.now() - lastRead;
      if (idle >= quietMs || this.#stop.signal.aborted) return paused;
      if (!paused) this.status.pauses++;
      paused = true;
      await sleep(Math.min(QUIET_POLL_MS, quietMs - idle), this.#stop.signal);
    }
  }

  async #run(rate: number, quietMs: number): Promise<void> {
    let started = performance.now();
    let paced = 0;
    for (const layer of this.layers) {
      for (let first = 0; first < layer.table.chunkCount && !this.#stop.signal.aborted; first += BACKGROUND_BATCH_CHUNKS) {
        const batch: number[] = [];
        for (let i = first; i < Math.min(first + BACKGROUND_BATCH_CHUNKS, layer.table.chunkCount); i++) if (!layer.isPresent(i)) batch.push(i);
        if (batch.length === 0) continue;
        if (await this.#waitQuiet(quietMs)) {
          // Pacing restarts after a pause, so a long pause does not buy a burst.
          started = performance.now();
          paced = 0;
        }
        if (this.#stop.signal.aborted) return;
        await layer.prefetch(batch);
        const bytes = batch.reduce((sum, i) => sum + (layer.table.frameRange(i).end - layer.table.frameRange(i).start), 0);
        this.status.chunks += batch.length;
        this.status.bytes += bytes;
        // Pace: never ahead of `rate` since the (re)start.
        paced += bytes;
        const due = started + (paced / rate) * 1000;
        const wait = due - performance.now();
        if (wait > 0) await sleep(wait, this.#stop.signal);
      }
    }
    this.options.log?.(`background fetch: done, ${this.status.chunks} chunks (${this.status.bytes} bytes)`);
  }
}

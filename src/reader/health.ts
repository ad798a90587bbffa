// Registry health shared by every layer of a mount (a circuit breaker). When a fetch fails transiently past
// its retries, the registry is marked down: later fetches do not each retry for a whole read deadline (the
// kernel retries failed reads, and each retry would otherwise wait again). While down, one fetch at a time
// goes out as a single-attempt probe every probe interval, and the others wait for its outcome; a success
// marks the registry up again, so reads recover without a remount.

/** How long after a failure the next probe request may go out. */
export const DEFAULT_PROBE_INTERVAL_MS = 500;

export class RegistryUnavailableError extends Error {
  override name = 'RegistryUnavailableError';
  /** Transient: a later read may succeed. */
  readonly code = 'EAGAIN';
}

export class RegistryHealth {
  #downSince: number | undefined;
  #nextProbeAt = 0;
  #probe: { promise: Promise<void>; resolve: () => void } | undefined;
  #lastError: unknown;
  #trips = 0;

  constructor(
    private readonly probeIntervalMs = DEFAULT_PROBE_INTERVAL_MS,
    private readonly now: () => number = Date.now,
  ) {}

  get down(): boolean {
    return this.#downSince !== undefined;
  }

  /** Times the registry was marked down since start. */
  get trips(): number {
    return this.#trips;
  }

  /**
   * Before a fetch: 'normal' when up; 'probe' when down and this caller may try once (it must report the
   * outcome with markUp/markDown). While down, waits (until `signal` aborts) for the next probe time or
   * for the outcome of the probe that is out; without a signal, throws RegistryUnavailableError instead.
   */
  async admit(what: string, signal?: AbortSignal): Promise<'normal' | 'probe'> {
    while (this.#downSince !== undefined) {
      if (this.#probe) {
        await waitFor(this.#probe.promise, signal);
        continue;
      }
      const wait = this.#nextProbeAt - this.now();
      if (wait <= 0) {
        let resolve!: () => void;
        const promise = new Promise<void>((r) => (resolve = r));
        this.#probe = { promise, resolve };
        return 'probe';
      }
      if (!signal) {
        const since = Math.round((this.now() - this.#downSince) / 1000);
        const last = this.#lastError instanceof Error ? `: ${this.#lastError.message}` : '';
        throw new RegistryUnavailableError(`${what}: registry unavailable for ${since} s${last}`, { cause: this.#lastError });
      }
      await waitFor(new Promise<void>((r) => setTimeout(r, wait).unref()), signal);
    }
    return 'normal';
  }

  markUp(): void {
    this.#downSince = undefined;
    this.#lastError = undefined;
    this.#endProbe();
  }

  markDown(err: unknown): void {
    if (this.#downSince === undefined) {
      this.#downSince = this.now();
      this.#trips++;
    }
    this.#lastError = err;
    this.#nextProbeAt = this.now() + this.probeIntervalMs;
    this.#endProbe();
  }

  #endProbe(): void {
    const probe = this.#probe;
    this.#probe = undefined;
    probe?.resolve();
  }
}

function waitFor(promise: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (!signal) return promise;
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    });
  });
}

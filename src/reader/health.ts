// Registry health shared by every layer of a mount (a circuit breaker). When a fetch fails transiently past
// its retries, the registry is marked down: later fetches do not each retry for a whole read deadline (the
// kernel retries failed reads, and each retry would otherwise wait again). While down, one fetch at a time
// goes out as a single-attempt probe once the probe interval has passed, fetches arriving while it is out
// wait for its outcome, and the others fail at once; a success marks the registry up again, so reads
// recover without a remount.

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
   * Before a fetch: 'normal' when up; 'probe' when down and the probe interval has passed (the caller tries
   * once and must report the outcome with markUp/markDown). While a probe is out, waits for its outcome (or
   * `signal`) and then proceeds or throws; otherwise, while down, throws RegistryUnavailableError at once.
   * So a read while the registry is down costs at most one request, not a whole read deadline (the kernel
   * retries failed pages one by one, and each retry would otherwise wait again).
   */
  async admit(what: string, signal?: AbortSignal): Promise<'normal' | 'probe'> {
    if (this.#downSince === undefined) return 'normal';
    if (this.#probe) {
      // One probe decides for everyone waiting on it: up means go ahead, still down means fail now.
      await waitFor(this.#probe.promise, signal);
      if (this.#downSince === undefined) return 'normal';
      throw this.#unavailable(what);
    }
    if (this.now() < this.#nextProbeAt) throw this.#unavailable(what);
    let resolve!: () => void;
    const promise = new Promise<void>((r) => (resolve = r));
    this.#probe = { promise, resolve };
    return 'probe';
  }

  #unavailable(what: string): RegistryUnavailableError {
    const since = Math.round((this.now() - (this.#downSince ?? this.now())) / 1000);
    const last = this.#lastError instanceof Error ? `: ${this.#lastError.message}` : '';
    return new RegistryUnavailableError(`${what}: registry unavailable for ${since} s${last}`, { cause: this.#lastError });
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

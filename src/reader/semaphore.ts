// Bounds the range requests a layer has in flight, with two priorities: on-demand reads are always served
// first, prefetch only takes a slot when no read waits and leaves some slots free for reads. Waiting is
// abortable, so a read's deadline also covers time spent queued here.

export type RequestPriority = 'demand' | 'prefetch';

/** Gives the slot back; calling it more than once is harmless. */
export type Release = () => void;

interface Waiter {
  grant: (release: Release) => void;
  reject: (reason: unknown) => void;
  detach: () => void;
}

export class RequestSemaphore {
  #active = 0;
  #peak = 0;
  readonly #demand: Waiter[] = [];
  readonly #prefetch: Waiter[] = [];

  /**
   * @param limit most slots held at once
   * @param prefetchLimit most slots prefetch may hold at once (≤ limit; default limit − 1, at least 1)
   */
  constructor(
    readonly limit: number,
    readonly prefetchLimit: number = Math.max(1, limit - 1),
  ) {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`request limit ${limit} must be an integer >= 1`);
    if (!Number.isInteger(prefetchLimit) || prefetchLimit < 1 || prefetchLimit > limit) {
      throw new RangeError(`prefetch request limit ${prefetchLimit} must be an integer in [1, ${limit}]`);
    }
  }

  /** Slots held now. */
  get active(): number {
    return this.#active;
  }

  /** Most slots ever held at once. */
  get peak(): number {
    return this.#peak;
  }

  /** Requests waiting for a slot. */
  get waiting(): number {
    return this.#demand.length + this.#prefetch.length;
  }

  #canGrant(priority: RequestPriority): boolean {
    if (priority === 'demand') return this.#active < this.limit;
    return this.#active < this.prefetchLimit && this.#demand.length === 0;
  }

  #take(): Release {
    this.#active++;
    this.#peak = Math.max(this.#peak, this.#active);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#active--;
      this.#pump();
    };
  }

  #pump(): void {
    while (this.#demand.length > 0 && this.#canGrant('demand')) {
      const waiter = this.#demand.shift()!;
      waiter.detach();
      waiter.grant(this.#take());
    }
    while (this.#prefetch.length > 0 && this.#canGrant('prefetch')) {
      const waiter = this.#prefetch.shift()!;
      waiter.detach();
      waiter.grant(this.#take());
    }
  }

  /** Waits for a slot; rejects with `signal.reason` if the signal aborts first (the place in line is given up). */
  acquire(priority: RequestPriority, signal?: AbortSignal): Promise<Release> {
    if (signal?.aborted) return Promise.reject(signal.reason);
    const queue = priority === 'demand' ? this.#demand : this.#prefetch;
    if (queue.length === 0 && this.#canGrant(priority)) return Promise.resolve(this.#take());
    return new Promise<Release>((resolve, reject) => {
      const onAbort = (): void => {
        const at = queue.indexOf(waiter);
        if (at >= 0) queue.splice(at, 1);
        reject(signal!.reason);
        // A prefetch waiter behind this one may now be allowed (demand queue got shorter).
        this.#pump();
      };
      const waiter: Waiter = {
        grant: resolve,
        reject,
        detach: () => signal?.removeEventListener('abort', onAbort),
      };
      signal?.addEventListener('abort', onAbort, { once: true });
      queue.push(waiter);
    });
  }
}

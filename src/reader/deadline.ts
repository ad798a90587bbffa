// Time limits of the read path: a Deadline is an AbortSignal that fires at a fixed time (and with its parent,
// e.g. the layer being closed), plus helpers that race promises and sleeps against a signal, so that nothing
// a read waits for (a fetcher that never settles, a queue, a disk) can hold it past its deadline.
import { setMaxListeners } from 'node:events';

/** Swallows a rejection of a promise whose result nobody waits for any more. */
export function ignoreRejection(promise: Promise<unknown>): void {
  promise.catch(() => undefined);
}

export class Deadline {
  readonly #controller = new AbortController();
  readonly #timer: NodeJS.Timeout;
  readonly #at: number;
  readonly #detachParent: (() => void) | undefined;

  /**
   * @param ms time from now until the signal aborts
   * @param reason builds the abort reason when the time is up (called then, so it can name the last error)
   * @param parent aborting it aborts this deadline too, with the parent's reason
   */
  constructor(
    readonly ms: number,
    reason: () => Error,
    parent?: AbortSignal,
  ) {
    // Every concurrent read and request listens on these signals; many listeners are expected, not a leak.
    setMaxListeners(0, this.#controller.signal, ...(parent ? [parent] : []));
    this.#at = performance.now() + ms;
    this.#timer = setTimeout(() => this.#controller.abort(reason()), ms);
    if (parent) {
      if (parent.aborted) {
        this.#controller.abort(parent.reason);
      } else {
        const onParentAbort = (): void => this.#controller.abort(parent.reason);
        parent.addEventListener('abort', onParentAbort, { once: true });
        this.#detachParent = () => parent.removeEventListener('abort', onParentAbort);
      }
    }
  }

  get signal(): AbortSignal {
    return this.#controller.signal;
  }

  get expired(): boolean {
    return this.#controller.signal.aborted;
  }

  /** Milliseconds left (0 when expired). */
  remaining(): number {
    return this.expired ? 0 : Math.max(0, this.#at - performance.now());
  }

  /** Stops the timer and lets go of the parent; the signal stays as it is. */
  dispose(): void {
    clearTimeout(this.#timer);
    this.#detachParent?.();
  }
}

/** `promise`, or a rejection with `signal.reason` as soon as the signal aborts (the promise is then ignored). */
export function raceSignal<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  if (signal.aborted) {
    ignoreRejection(promise);
    return Promise.reject(signal.reason);
  }
  return new Promise<T>((resolve, reject) => {
    const onAbort = (): void => {
      ignoreRejection(promise);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (value) => {
        signal.removeEventListener('abort', onAbort);
        resolve(value);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        reject(err);
      },
    );
  });
}

/** Waits `ms`, or rejects with `signal.reason` when the signal aborts first. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) return Promise.reject(signal.reason);
  return new Promise<void>((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

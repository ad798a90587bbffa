// Async mutual exclusion for the snapshotter: one Mutex serializes metadata changes, a KeyedMutex
// serializes the work on one layer (mount, share, unmount) while other layers proceed.
export class Mutex {
  #tail: Promise<void> = Promise.resolve();

  /** Runs `fn` after every earlier holder finished; the lock is released however `fn` ends. */
  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.#tail.then(fn);
    this.#tail = result.then(
      () => undefined,
      () => undefined,
    );
    return result;
  }
}

export class KeyedMutex {
  readonly #locks = new Map<string, { mutex: Mutex; holders: number }>();

  run<T>(key: string, fn: () => Promise<T>): Promise<T> {
    let entry = this.#locks.get(key);
    if (!entry) {
      entry = { mutex: new Mutex(), holders: 0 };
      this.#locks.set(key, entry);
    }
    const held = entry;
    held.holders++;
    return held.mutex.run(fn).finally(() => {
      held.holders--;
      if (held.holders === 0 && this.#locks.get(key) === held) this.#locks.delete(key);
    });
  }
}

// Byte sources and sinks shared by the whole-blob encoder and decoders: a file path or an async iterable of
// bytes (any Readable) in, a file path or a Writable out, with back-pressure and clean-up on failure.
import { createReadStream } from 'node:fs';
import { lstat, open, rm } from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import type { Writable } from 'node:stream';

/** A file path, or bytes in order (a Readable without an encoding set, or any async iterable). */
export type ByteSource = string | AsyncIterable<Uint8Array>;
/** A file path (created or truncated), or a Writable. */
export type ByteSink = string | Writable;

/** Read size when a source is a file path. */
export const FILE_READ_CHUNK = 1024 * 1024;

/** Iterates a source's bytes; rejects non-byte items (e.g. strings from a Readable with an encoding). */
export async function* iterateSource(source: ByteSource, what = 'input'): AsyncGenerator<Uint8Array> {
  const iterable: AsyncIterable<unknown> =
    typeof source === 'string' ? createReadStream(source, { highWaterMark: FILE_READ_CHUNK }) : source;
  for await (const piece of iterable) {
    if (!(piece instanceof Uint8Array)) {
      throw new TypeError(`${what}: stream yielded ${typeof piece}, want bytes (is an encoding set on the stream?)`);
    }
    yield piece;
  }
}

/** Where encoded or decoded bytes go. */
export interface Sink {
  write(bytes: Uint8Array): Promise<void>;
  /** Flushes and closes (ends the Writable unless told not to). */
  close(): Promise<void>;
  /** Gives up after an error: closes the file and removes it if it is a regular file this sink created. */
  abort(): Promise<void>;
}

class FileSink implements Sink {
  constructor(
    private readonly path: string,
    private readonly handle: FileHandle,
  ) {}

  async write(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) {
      const { bytesWritten } = await this.handle.write(bytes, done, bytes.length - done);
      done += bytesWritten;
    }
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
    const st = await lstat(this.path).catch(() => undefined);
    if (st?.isFile()) await rm(this.path, { force: true });
  }
}

class StreamSink implements Sink {
  #error: Error | undefined;

  constructor(
    private readonly stream: Writable,
    private readonly end: boolean,
  ) {
    stream.on('error', (err: Error) => {
      this.#error ??= err;
    });
  }

  #wait(event: 'drain' | 'finish'): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const cleanup = () => {
        this.stream.off(event, onDone);
        this.stream.off('error', onError);
        this.stream.off('close', onClose);
      };
      const onDone = () => {
        cleanup();
        resolve();
      };
      const onError = (err: Error) => {
        cleanup();
        reject(err);
      };
      const onClose = () => {
        cleanup();
        if (event === 'finish' && this.stream.writableFinished) resolve();
        else reject(this.#error ?? new Error(`output stream closed while waiting for '${event}'`));
      };
      this.stream.on(event, onDone);
      this.stream.on('error', onError);
      this.stream.on('close', onClose);
    });
  }

  async write(bytes: Uint8Array): Promise<void> {
    if (this.#error) throw this.#error;
    if (this.stream.destroyed) throw new Error('output stream was destroyed');
    if (!this.stream.write(bytes)) await this.#wait('drain');
    if (this.#error) throw this.#error;
  }

  async close(): Promise<void> {
    if (this.#error) throw this.#error;
    if (!this.end) return;
    const finished = this.#wait('finish');
    this.stream.end();
    await finished;
  }

  async abort(): Promise<void> {
    // The caller owns the stream; it decides whether to destroy it.
  }
}

/** Opens a sink. A Writable is ended by close() when `end` is true (the default). */
export async function openSink(sink: ByteSink, options: { end?: boolean } = {}): Promise<Sink> {
  if (typeof sink === 'string') return new FileSink(sink, await open(sink, 'w'));
  return new StreamSink(sink, options.end ?? true);
}

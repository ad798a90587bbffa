// Output helpers shared by the commands: one-line error text and the failure line every command ends with,
// timestamped log lines of the serving processes, JSON printing, and a progress line that is shown only on
// a terminal. Loaded on every start-up: imports only the tiny src/util/errors.

/** Exit code of a command that failed. */
export const EXIT_FAILURE = 1;
/** Exit code of a command line that does not parse (unknown command or option, missing argument). */
export const EXIT_USAGE = 2;

export { oneLineError } from '../util/errors.js';
import { oneLineError } from '../util/errors.js';

/** Reports a failed command: one line on stderr (the stack too with EROFS_LAZY_DEBUG=1); returns the exit code. */
export function reportFailure(err: unknown): number {
  process.stderr.write(`erofs-lazy: ${oneLineError(err)}\n`);
  if (process.env.EROFS_LAZY_DEBUG && err instanceof Error && err.stack) process.stderr.write(`${err.stack}\n`);
  return EXIT_FAILURE;
}

/** A log line of a serving process (mount --foreground, serve), on stderr with an ISO timestamp. */
export function timestampedLog(line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}

export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** A single status line rewritten in place on stderr when it is a TTY; silent otherwise. */
export class ProgressLine {
  private readonly enabled: boolean;
  private shown = false;

  constructor(stream: NodeJS.WriteStream = process.stderr) {
    this.enabled = Boolean(stream.isTTY);
    this.stream = stream;
  }

  private readonly stream: NodeJS.WriteStream;

  update(text: string): void {
    if (!this.enabled) return;
    const width = (this.stream.columns || 80) - 1;
    this.stream.write(`\r\x1b[K${text.slice(0, width)}`);
    this.shown = true;
  }

  done(): void {
    if (this.enabled && this.shown) this.stream.write('\r\x1b[K');
    this.shown = false;
  }
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = n;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
}

export function shortDigest(digest: string): string {
  const colon = digest.indexOf(':');
  return colon < 0 ? digest : `${digest.slice(0, colon + 13)}`;
}

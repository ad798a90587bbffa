// Output helpers shared by the commands: one-line error text, JSON printing, and a progress line that
// is shown only on a terminal.

/** The error's message on one line (causes appended), without stack traces. */
export function oneLineError(err: unknown): string {
  const parts: string[] = [];
  let current: unknown = err;
  for (let depth = 0; current !== undefined && depth < 4; depth++) {
    const text = current instanceof Error ? current.message : String(current);
    if (text && !parts.some((p) => p.includes(text))) parts.push(text);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join(': ').replace(/\s*\n\s*/g, ' ');
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

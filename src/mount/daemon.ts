// Runs a mount in the background: `erofs-lazy mount` re-executes itself with --foreground in a detached
// process whose output goes to a log file, and returns once that process reports the mount ready (or the
// error that stopped it) through an extra pipe. Extra environment entries can hand the child what the parent
// already worked out (`mount` passes its parsed options, so that its serving process need not parse them).
import { spawn } from 'node:child_process';
import { createWriteStream, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

/** File descriptor number of the readiness pipe in the child. */
export const READY_FD = 3;
const LOG_TAIL_LINES = 3;

export interface ReadyMessage {
  ready?: boolean;
  pid?: number;
  error?: string;
}

/** In the serving process: reports readiness (or failure) to the parent, then closes the pipe. */
export function notifyParent(fd: number, message: ReadyMessage): Promise<void> {
  return new Promise((resolve) => {
    const stream = createWriteStream('', { fd, autoClose: true });
    stream.on('error', () => resolve());
    stream.end(`${JSON.stringify(message)}\n`, () => resolve());
  });
}

function logTail(path: string): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-LOG_TAIL_LINES).join(' | ');
  } catch {
    return '';
  }
}

export interface BackgroundOptions {
  /** Added to this process's environment for the child. */
  env?: Record<string, string>;
}

/** Starts `node CLI args... --foreground --ready-fd 3` detached and waits for its readiness message. */
export async function startInBackground(cliPath: string, args: string[], logPath: string, options: BackgroundOptions = {}): Promise<number> {
  await mkdir(dirname(logPath), { recursive: true });
  const logFd = openSync(logPath, 'a');
  const child = spawn(process.execPath, [cliPath, ...args, '--foreground', '--ready-fd', String(READY_FD)], {
    detached: true,
    stdio: ['ignore', logFd, logFd, 'pipe'],
    env: options.env ? { ...process.env, ...options.env } : process.env,
  });
  closeSync(logFd);
  const pipe = child.stdio[READY_FD]!;
  let text = '';
  const message = await new Promise<ReadyMessage | undefined>((resolve) => {
    pipe.on('data', (d: Buffer) => {
      text += d.toString('utf8');
      const nl = text.indexOf('\n');
      if (nl >= 0) {
        try {
          resolve(JSON.parse(text.slice(0, nl)) as ReadyMessage);
        } catch {
          resolve({ error: `unreadable readiness message ${JSON.stringify(text.slice(0, 200))}` });
        }
      }
    });
    pipe.on('end', () => resolve(undefined));
    pipe.on('error', () => resolve(undefined));
    child.on('exit', () => setTimeout(() => resolve(undefined), 100));
  });
  pipe.destroy();
  if (message?.ready) {
    child.unref();
    return child.pid!;
  }
  if (child.exitCode === null) child.kill('SIGTERM');
  const reason = message?.error ?? (logTail(logPath) || 'the mount process exited without a reason');
  throw new Error(reason);
}

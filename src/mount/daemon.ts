// Runs a mount in the background: `erofs-lazy mount` re-executes itself with --foreground in a detached
// process whose output goes to a log file, and returns once that process reports the mount ready (or the
// error that stopped it) through an extra pipe. Extra environment entries can hand the child what the parent
// already worked out (`mount` passes its parsed options, so that its serving process need not parse them).
//
// Early start: the serving process spends most of its start-up loading modules, the parent most of its own
// parsing the command line; `startEarly` (called by entry.ts before parsing) starts the child at once, and
// `startInBackground` then hands it the options and the log path through a second pipe instead of spawning.
// A child whose parent never hands it anything (usage error, --help) is killed, or exits when the pipe closes.
import { spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import type { Writable } from 'node:stream';
import { createWriteStream, openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';

/** File descriptor number of the readiness pipe in the child. */
export const READY_FD = 3;
/** File descriptor number of the pipe an early-started child reads its handover from. */
export const EARLY_HANDOVER_FD = 4;
/**
 * Node flags of the serving processes. --single-threaded-gc: V8's parallel GC threads competed with the read
 * path for the cores (a cold 1 GiB read: 152-178 MB/s with it, 101-132 without; 10-15% less CPU per GiB).
 * Node refuses it in NODE_OPTIONS, so it goes on the command line.
 */
export const SERVING_NODE_FLAGS: readonly string[] = ['--single-threaded-gc'];
/**
 * glibc malloc arenas of the serving processes (unless the environment sets MALLOC_ARENA_MAX): with one per
 * thread, freed 4 MiB chunk buffers stay held by the arenas of the decode and I/O threads (a cold 1 GiB read
 * peaked at 363-369 MiB; with one arena 298-304 MiB, no measurable CPU cost).
 */
const SERVING_MALLOC_ARENA_MAX = '1';

/** The serving process's command line: `FLAGS CLI args... --foreground --ready-fd 3` (what `ps` shows). */
function servingArgv(cliPath: string, args: string[]): string[] {
  return [...SERVING_NODE_FLAGS, cliPath, ...args, '--foreground', '--ready-fd', String(READY_FD)];
}

function servingEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  return { ...process.env, MALLOC_ARENA_MAX: process.env.MALLOC_ARENA_MAX ?? SERVING_MALLOC_ARENA_MAX, ...extra };
}

/** Environment variable marking an early-started child (its handover comes on EARLY_HANDOVER_FD). */
export const EARLY_START_ENV = 'EROFS_LAZY_EARLY_START';

/** What an early-started child receives once the parent has parsed its command line. */
export interface EarlyHandover {
  /** Environment entries the child would have been started with (the prepared options). */
  env: Record<string, string>;
  /** Where the child's output goes. */
  logPath: string;
}

let early: { child: ChildProcess; args: string[] } | undefined;

/** Starts the serving process for `args` before they are parsed (see the header); startInBackground uses it. */
export function startEarly(cliPath: string, args: string[]): void {
  const child = spawn(process.execPath, servingArgv(cliPath, args), {
    detached: true,
    stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'],
    env: servingEnv({ [EARLY_START_ENV]: '1' }),
  });
  child.on('error', () => undefined);
  early = { child, args };
}

/** Kills an early-started child that was not handed a mount (the command did not get that far). */
export function cancelEarly(): void {
  if (!early) return;
  const { child } = early;
  early = undefined;
  if (child.exitCode === null) child.kill('SIGKILL');
  for (const stream of child.stdio) stream?.destroy();
  child.unref();
}
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

/** Starts `node FLAGS CLI args... --foreground --ready-fd 3` detached and waits for its readiness message. */
export async function startInBackground(cliPath: string, args: string[], logPath: string, options: BackgroundOptions = {}): Promise<number> {
  await mkdir(dirname(logPath), { recursive: true });
  let child: ChildProcess;
  const started = early;
  early = undefined;
  if (started && started.child.exitCode === null && started.args.length === args.length && started.args.every((a, i) => a === args[i])) {
    child = started.child;
    const handover: EarlyHandover = { env: options.env ?? {}, logPath };
    (child.stdio[EARLY_HANDOVER_FD] as Writable).end(JSON.stringify(handover));
  } else {
    if (started) {
      early = started;
      cancelEarly();
    }
    const logFd = openSync(logPath, 'a');
    child = spawn(process.execPath, servingArgv(cliPath, args), {
      detached: true,
      stdio: ['ignore', logFd, logFd, 'pipe'],
      env: servingEnv(options.env ?? {}),
    });
    closeSync(logFd);
  }
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
  child.stdio[EARLY_HANDOVER_FD]?.destroy();
  if (message?.ready) {
    child.unref();
    return child.pid!;
  }
  if (child.exitCode === null) child.kill('SIGTERM');
  const reason = message?.error ?? (logTail(logPath) || 'the mount process exited without a reason');
  throw new Error(reason);
}

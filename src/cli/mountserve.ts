// The serving process of `erofs-lazy mount`: mounts the image with MountServer, reports readiness (or the error
// that stopped it) through the readiness pipe, serves until SIGTERM/SIGINT, then unmounts and exits. Reached by
// `mount --foreground` (through yargs) and by the background process `mount` starts, which receives the
// parent's prepared options in the environment (entry.ts), or, started early, through a pipe together with
// its log path. Only the serving path loads the mount server.
import { closeSync, createReadStream, openSync, writeSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { EARLY_HANDOVER_FD, notifyParent, READY_FD } from '../mount/daemon.js';
import type { EarlyHandover } from '../mount/daemon.js';
import type { MountOptions, MountServer } from '../mount/server.js';
import { MOUNT_OPTIONS_ENV } from './entry.js';
import { oneLineError, timestampedLog } from './output.js';

/** MountServer's options as the CLI hands them over: plain data (JSON), without the log callback. */
export type MountServeOptions = Omit<MountOptions, 'log'>;

/** What `mount` passes to its background process. */
interface PreparedMount {
  options: MountServeOptions;
  /** The readiness pipe's descriptor in the serving process. */
  readyFd: number;
}

/** The environment entries that hand `options` to a background serving process. */
export function preparedMountEnv(options: MountServeOptions, readyFd: number): Record<string, string> {
  const prepared: PreparedMount = { options, readyFd };
  return { [MOUNT_OPTIONS_ENV]: JSON.stringify(prepared) };
}

function parsePrepared(text: string): PreparedMount {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (err) {
    throw new Error(`${MOUNT_OPTIONS_ENV} is not JSON`, { cause: err });
  }
  const p = value as Partial<PreparedMount> | null;
  if (typeof p?.readyFd !== 'number' || typeof p.options?.reference !== 'string' || typeof p.options.mountpoint !== 'string') {
    throw new Error(`${MOUNT_OPTIONS_ENV} does not hold a mount's options and readiness descriptor`);
  }
  return p as PreparedMount;
}

/** In the background process: serves the mount its parent prepared. */
export async function serveMountFromParent(text: string): Promise<void> {
  let prepared: PreparedMount;
  try {
    prepared = parsePrepared(text);
  } catch (err) {
    // The parent waits on the conventional descriptor; tell it why nothing will be mounted.
    await notifyParent(READY_FD, { error: oneLineError(err) });
    throw err;
  }
  await serveMount(prepared.options, prepared.readyFd);
}

/** Largest handover accepted from the parent (options are a few KiB). */
const MAX_HANDOVER_BYTES = 1024 * 1024;

async function readHandover(): Promise<string> {
  let text = '';
  for await (const chunk of createReadStream('', { fd: EARLY_HANDOVER_FD, encoding: 'utf8' })) {
    text += chunk as string;
    if (text.length > MAX_HANDOVER_BYTES) throw new Error(`handover from the parent exceeds ${MAX_HANDOVER_BYTES} bytes`);
  }
  return text;
}

/**
 * Sends everything this process writes to stdout and stderr (it was started with neither) to the log file,
 * uncaught errors included, as the parent's log descriptor would have.
 */
function logTo(logPath: string): void {
  const fd = openSync(logPath, 'a');
  const write = (chunk: string | Uint8Array, encoding?: BufferEncoding | ((err?: Error | null) => void), cb?: (err?: Error | null) => void): boolean => {
    writeSync(fd, typeof chunk === 'string' ? Buffer.from(chunk, typeof encoding === 'string' ? encoding : 'utf8') : chunk);
    const done = typeof encoding === 'function' ? encoding : cb;
    done?.(null);
    return true;
  };
  process.stdout.write = write as typeof process.stdout.write;
  process.stderr.write = write as typeof process.stderr.write;
  process.on('uncaughtException', (err) => {
    writeSync(fd, `${new Date().toISOString()} uncaught: ${err.stack ?? String(err)}\n`);
    closeSync(fd);
    process.exit(1);
  });
}

/**
 * In a process started before its parent parsed the command line: loads the mount server while waiting for
 * the handover, then serves the mount it describes. No handover (the parent stopped) means nothing to do.
 */
export async function serveEarlyStartedMount(): Promise<void> {
  const loading = import('../mount/server.js');
  loading.catch(() => undefined);
  const text = await readHandover();
  if (text === '') process.exit(0);
  let handover: EarlyHandover;
  try {
    handover = JSON.parse(text) as EarlyHandover;
    if (typeof handover.logPath !== 'string' || typeof handover.env?.[MOUNT_OPTIONS_ENV] !== 'string') throw new Error('incomplete');
  } catch (err) {
    await notifyParent(READY_FD, { error: `unreadable handover from the mount command: ${oneLineError(err)}` });
    throw err;
  }
  logTo(handover.logPath);
  await serveMountFromParent(handover.env[MOUNT_OPTIONS_ENV]);
}

/** Mounts, reports readiness to `readyFd` (if any), serves until SIGTERM/SIGINT, unmounts and exits the process. */
export async function serveMount(options: MountServeOptions, readyFd: number | undefined): Promise<void> {
  let server: MountServer;
  try {
    await mkdir(options.cacheDir, { recursive: true });
    const { MountServer } = await import('../mount/server.js');
    server = await MountServer.start({ ...options, log: timestampedLog });
  } catch (err) {
    if (readyFd !== undefined) await notifyParent(readyFd, { error: oneLineError(err) });
    throw err;
  }
  timestampedLog(`mounted ${options.reference} at ${options.mountpoint}`);
  if (readyFd !== undefined) await notifyParent(readyFd, { ready: true, pid: process.pid });
  await new Promise<void>((done) => {
    const onSignal = (signal: string) => {
      timestampedLog(`${signal}: unmounting ${options.mountpoint}`);
      server.stop().then(done, (err: unknown) => timestampedLog(`unmount failed, still serving: ${oneLineError(err)}`));
    };
    process.on('SIGTERM', () => onSignal('SIGTERM'));
    process.on('SIGINT', () => onSignal('SIGINT'));
  });
  timestampedLog(`unmounted ${options.mountpoint}`);
  process.exit(0);
}

// The FUSE manager: a detached process that serves the remote layers' stacks (LazyLayer → FUSE → loop →
// erofs, see stack.ts) for `erofs-lazy serve`, so that they outlive serve. The kernel keeps loop devices,
// erofs, bind and overlay mounts across a serve crash, but a FUSE mount dies with the process serving it;
// with the FUSE side here, containers started before a serve crash keep reading their layers (also data
// never read before) while serve is down and after it restarts, and a restarted serve adopts the layers
// already mounted instead of mounting them again. Like stargz's fuse manager.
//
// One manager per snapshotter root: `<root>/fuse-manager.sock` (HTTP with JSON bodies over a unix socket,
// mode 0600), `<root>/fuse-manager.pid`, its settings in `<root>/fuse-manager.json` (written by serve) and
// its log in `<root>/fuse-manager.log`. It stops (unmounting its layers) on POST /shutdown (a clean serve
// stop), on SIGTERM/SIGINT, or when its settings file disappears (the root was deleted).
import { existsSync } from 'node:fs';
import { chmod, readFile, rm } from 'node:fs/promises';
import { createServer, request } from 'node:http';
import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import { join } from 'node:path';
import { startInBackground } from '../mount/daemon.js';
import { processAlive } from '../mount/state.js';
import { writeFileAtomic } from './atomicfile.js';
import { errorMessage } from './errors.js';
import type { LayerBackend } from './layers.js';
import type { LayerMetrics } from './metrics.js';
import { InProcessLayers } from './stack.js';
import type { LayerServiceConfig } from './stack.js';
import type { RemoteLayerRef } from './store.js';

export const FUSE_MANAGER_SOCKET = 'fuse-manager.sock';
export const FUSE_MANAGER_PID = 'fuse-manager.pid';
export const FUSE_MANAGER_CONFIG = 'fuse-manager.json';
export const FUSE_MANAGER_LOG = 'fuse-manager.log';
/** The hidden CLI command that runs the manager (registered in src/cli/serve.ts). */
export const FUSE_MANAGER_COMMAND = 'serve-fuse-manager';

/** A request that mounts a layer may wait for the registry (table) and the first reads of erofs. */
const MOUNT_REQUEST_TIMEOUT_MS = 300_000;
/** Other requests answer from memory or do quick local work. */
const REQUEST_TIMEOUT_MS = 60_000;
/** How often the manager checks that its settings file (its root) still exists. */
const WATCHDOG_INTERVAL_MS = 2_000;
const MAX_REQUEST_BODY_BYTES = 1024 * 1024;
/** After a shutdown, how long (polls × interval) serve waits for the manager process to be gone. */
const MANAGER_EXIT_POLLS = 100;
const MANAGER_EXIT_POLL_MS = 50;

interface Status {
  pid: number;
  config: LayerServiceConfig;
  layers: string[];
}

function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

function readBody(req: IncomingMessage): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_REQUEST_BODY_BYTES) req.destroy(new Error('request body too large'));
      else chunks.push(c);
    });
    req.on('end', () => {
      try {
        resolve(chunks.length === 0 ? {} : JSON.parse(Buffer.concat(chunks).toString('utf8')));
      } catch (err) {
        reject(err);
      }
    });
    req.on('error', reject);
  });
}

function digestOf(body: unknown): string {
  const d = (body as { digest?: unknown }).digest;
  if (typeof d !== 'string' || d === '') throw new Error('request names no layer digest');
  return d;
}

/** Runs the manager in this process until it is told to stop; `ready` reports when it serves. */
export async function runFuseManager(root: string, log: (line: string) => void, ready: (pid: number) => Promise<void>): Promise<number> {
  const configFile = join(root, FUSE_MANAGER_CONFIG);
  const config = JSON.parse(await readFile(configFile, 'utf8')) as LayerServiceConfig;
  const layers = await InProcessLayers.open(config, log);
  const socket = join(root, FUSE_MANAGER_SOCKET);
  let finish!: (code: number) => void;
  const finished = new Promise<number>((r) => (finish = r));
  let stopping: Promise<number> | undefined;
  let watchdog: NodeJS.Timeout | undefined;
  /** Unmounts every layer (once); resolves with the exit code. */
  const teardown = (why: string): Promise<number> => {
    stopping ??= (async () => {
      log(`${why}: unmounting ${layers.mounted().length} layers and stopping`);
      clearInterval(watchdog);
      try {
        await layers.close();
        return 0;
      } catch (err) {
        log(`stopping left something behind: ${errorMessage(err)}`);
        return 1;
      }
    })();
    return stopping;
  };
  const exit = async (code: number): Promise<void> => {
    server.close();
    server.closeAllConnections();
    await rm(socket, { force: true });
    await rm(join(root, FUSE_MANAGER_PID), { force: true });
    finish(code);
  };
  const stop = (why: string): void => {
    void teardown(why).then(exit);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const route = `${req.method} ${(req.url ?? '').split('?')[0]}`;
    switch (route) {
      case 'GET /status':
        return sendJson(res, 200, { pid: process.pid, config, layers: layers.mounted() } satisfies Status);
      case 'POST /layers/mount': {
        const { ref } = (await readBody(req)) as { ref: RemoteLayerRef };
        return sendJson(res, 200, await layers.mount(ref));
      }
      case 'POST /layers/unmount':
        await layers.unmount(digestOf(await readBody(req)));
        return sendJson(res, 200, {});
      case 'POST /cache/remove':
        await layers.removeCached(digestOf(await readBody(req)));
        return sendJson(res, 200, {});
      case 'POST /cache/usage':
        return sendJson(res, 200, await layers.cacheUsage(digestOf(await readBody(req))));
      case 'GET /metrics':
        return sendJson(res, 200, layers.metrics());
      case 'POST /shutdown': {
        const code = await teardown('asked to shut down');
        res.once('finish', () => void exit(code));
        return sendJson(res, 200, { code });
      }
      default:
        return sendJson(res, 404, { error: `no route ${route}` });
    }
  };
  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => sendJson(res, 500, { error: errorMessage(err) }));
  });
  await rm(socket, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socket, () => resolve());
  });
  await chmod(socket, 0o600);
  await writeFileAtomic(root, FUSE_MANAGER_PID, `${process.pid}\n`);
  watchdog = setInterval(() => {
    if (!existsSync(configFile)) stop(`${configFile} is gone`);
  }, WATCHDOG_INTERVAL_MS);
  watchdog.unref();
  process.once('SIGTERM', () => stop('SIGTERM'));
  process.once('SIGINT', () => stop('SIGINT'));
  log(`FUSE manager serving layers of ${root} on ${socket}`);
  await ready(process.pid);
  return finished;
}

/** serve's side: the manager's layers as a LayerBackend, over its socket. */
export class FuseManagerClient implements LayerBackend {
  readonly #socket: string;
  readonly pid: number;

  private constructor(root: string, pid: number) {
    this.#socket = join(root, FUSE_MANAGER_SOCKET);
    this.pid = pid;
  }

  #call<T>(method: 'GET' | 'POST', path: string, body?: unknown, timeoutMs = REQUEST_TIMEOUT_MS): Promise<T> {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    return new Promise((resolve, reject) => {
      const req = request(
        { socketPath: this.#socket, path, method, timeout: timeoutMs, headers: payload ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) } : {} },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            let parsed: unknown;
            try {
              parsed = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              reject(new Error(`FUSE manager ${path}: unreadable answer (status ${res.statusCode})`));
              return;
            }
            if (res.statusCode === 200) resolve(parsed as T);
            else reject(new Error(`FUSE manager: ${(parsed as { error?: string }).error ?? `status ${res.statusCode}`}`));
          });
          res.on('error', reject);
        },
      );
      req.on('timeout', () => req.destroy(new Error(`FUSE manager ${path}: no answer within ${timeoutMs} ms`)));
      req.on('error', (err) => reject(new Error(`FUSE manager ${path}: ${err.message}`)));
      req.end(payload);
    });
  }

  /** The manager already serving `root`, if one is alive and answers. */
  static async connect(root: string): Promise<{ client: FuseManagerClient; status: Status } | undefined> {
    const pid = Number((await readFile(join(root, FUSE_MANAGER_PID), 'utf8').catch(() => '')).trim());
    if (!Number.isSafeInteger(pid) || pid <= 0 || !processAlive(pid)) return undefined;
    const client = new FuseManagerClient(root, pid);
    try {
      const status = await client.#call<Status>('GET', '/status');
      return status.pid === pid ? { client, status } : undefined;
    } catch {
      return undefined;
    }
  }

  /** Starts a manager for `root` with `config` (detached, logging to <root>/fuse-manager.log). */
  static async start(root: string, config: LayerServiceConfig, cliPath: string): Promise<FuseManagerClient> {
    await writeFileAtomic(root, FUSE_MANAGER_CONFIG, `${JSON.stringify(config, null, 2)}\n`);
    const pid = await startInBackground(cliPath, [FUSE_MANAGER_COMMAND, '--root', root], join(root, FUSE_MANAGER_LOG));
    return new FuseManagerClient(root, pid);
  }

  /** Whether the manager process is still running. */
  alive(): boolean {
    return processAlive(this.pid);
  }

  mount(ref: RemoteLayerRef): Promise<{ erofsDir: string }> {
    return this.#call('POST', '/layers/mount', { ref }, MOUNT_REQUEST_TIMEOUT_MS);
  }

  async unmount(digest: string): Promise<void> {
    await this.#call('POST', '/layers/unmount', { digest }, MOUNT_REQUEST_TIMEOUT_MS);
  }

  async mounted(): Promise<string[]> {
    return (await this.#call<Status>('GET', '/status')).layers;
  }

  async removeCached(digest: string): Promise<void> {
    await this.#call('POST', '/cache/remove', { digest });
  }

  cacheUsage(digest: string): Promise<{ bytes: number; chunks: number }> {
    return this.#call('POST', '/cache/usage', { digest });
  }

  metrics(): Promise<LayerMetrics[]> {
    return this.#call('GET', '/metrics');
  }

  /** Unmounts every layer and stops the manager. */
  async close(): Promise<void> {
    const { code } = await this.#call<{ code: number }>('POST', '/shutdown', {}, MOUNT_REQUEST_TIMEOUT_MS);
    for (let i = 0; i < MANAGER_EXIT_POLLS && processAlive(this.pid); i++) await new Promise((r) => setTimeout(r, MANAGER_EXIT_POLL_MS));
    if (code !== 0) throw new Error(`the FUSE manager (pid ${this.pid}) could not unmount everything; see ${FUSE_MANAGER_LOG}`);
  }
}

// `erofs-lazy serve` put together: takes the root (one serve per root, by pid file), finds the FUSE manager
// of a previous run still serving its layers (or starts one), sweeps the mounts a crashed predecessor left
// under the root (sparing the layers a live manager serves), opens the metadata store, mounts every remote
// snapshot again from its saved data (no registry needed), then serves the snapshots API on the unix socket
// and, optionally, Prometheus metrics. stop() unmounts everything, stops the FUSE manager, and keeps the
// metadata, saved chunk tables and caches for the next start.
import { mkdir, readFile } from 'node:fs/promises';
import type { Server } from 'node:http';
import { join, resolve } from 'node:path';
import { processAlive } from '../mount/state.js';
import { removeFileDurably, writeFileAtomic } from './atomicfile.js';
import { errorMessage } from './errors.js';
import { FuseManagerClient } from './fusemanager.js';
import { SnapshotsGrpcServer } from './grpc.js';
import { inProcessBackend, RemoteLayerManager } from './layers.js';
import type { LayerBackend } from './layers.js';
import { serveMetrics } from './metrics.js';
import { Snapshotter } from './snapshots.js';
import { InProcessLayers } from './stack.js';
import type { LayerServiceConfig, RegistryAccess } from './stack.js';
import { MetadataStore } from './store.js';
import { sweepStaleMounts } from './sysmounts.js';
import { layerDir } from './tables.js';

/** Default --root: metadata and snapshot dirs. */
export const DEFAULT_SNAPSHOTTER_ROOT = '/var/lib/erofs-lazy/snapshotter';
export const METADATA_DIR = 'metadata';
export const PID_FILE = 'serve.pid';
/** How often serve checks that its FUSE manager still runs. */
const MANAGER_WATCH_INTERVAL_MS = 2_000;

/** What `serve` needs: the layer service's settings (chunk caches, registry, prefetch, ...) and its own. */
export interface ServeOptions extends LayerServiceConfig {
  /** Unix socket path. */
  address: string;
  /** Serve the layers' FUSE mounts from a detached FUSE manager (true) or from this process. */
  fuseManager: boolean;
  /** The erofs-lazy CLI script, to start the FUSE manager with. */
  cliPath: string;
  /** HOST:PORT for Prometheus metrics, if wanted. */
  metricsAddress?: string;
  log: (line: string) => void;
  /**
   * Called when serving cannot go on (the FUSE manager died: every layer it served is gone). The CLI exits
   * non-zero so that a supervisor restarts serve, which mounts the layers again.
   */
  onFatal?: (reason: string) => void;
}

/** Claims the root for this process; fails when another live serve holds it. */
async function claimRoot(root: string): Promise<void> {
  const pidFile = join(root, PID_FILE);
  const text = await readFile(pidFile, 'utf8').catch(() => '');
  const pid = Number(text.trim());
  if (Number.isSafeInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
    const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (cmdline.includes('serve')) throw new Error(`${root} is in use by another erofs-lazy serve (pid ${pid})`);
  }
  await writeFileAtomic(root, PID_FILE, `${process.pid}\n`);
}

/** The layer backend: a live FUSE manager (adopted), a new one, or this process; sweeps stale mounts first. */
async function openBackend(options: ServeOptions, config: LayerServiceConfig): Promise<LayerBackend> {
  const { log } = options;
  const root = config.root;
  let live = await FuseManagerClient.connect(root);
  if (live && (!options.fuseManager || (JSON.stringify(live.status.config) !== JSON.stringify(config) && live.status.layers.length === 0))) {
    log(`stopping the FUSE manager of a previous run (pid ${live.client.pid}): ${options.fuseManager ? 'its settings differ' : '--no-fuse-manager'}`);
    await live.client.close().catch((err: unknown) => log(`stopping the previous FUSE manager: ${errorMessage(err)}`));
    live = undefined;
  }
  if (live && JSON.stringify(live.status.config) !== JSON.stringify(config)) {
    log(`the FUSE manager of a previous run (pid ${live.client.pid}) keeps its settings until it has no layers left`);
  }
  const keep = live ? live.status.layers.map((d) => layerDir(root, d)) : [];
  for (const line of await sweepStaleMounts(root, log, keep)) log(`left by a previous run: ${line}`);
  if (live) {
    log(`adopting the FUSE manager of a previous run (pid ${live.client.pid}) serving ${live.status.layers.length} layers`);
    return live.client;
  }
  if (!options.fuseManager) return inProcessBackend(await InProcessLayers.open(config, log));
  const client = await FuseManagerClient.start(root, config, options.cliPath);
  log(`started the FUSE manager (pid ${client.pid})`);
  return client;
}

export class SnapshotterServer {
  readonly snapshotter: Snapshotter;
  readonly layers: RemoteLayerManager;
  readonly #grpc: SnapshotsGrpcServer;
  readonly #metrics: Server | undefined;
  readonly #root: string;
  readonly #log: (line: string) => void;
  #stopping: Promise<void> | undefined;
  #watch: NodeJS.Timeout | undefined;

  private constructor(root: string, snapshotter: Snapshotter, layers: RemoteLayerManager, grpc: SnapshotsGrpcServer, metrics: Server | undefined, log: (line: string) => void) {
    this.#root = root;
    this.snapshotter = snapshotter;
    this.layers = layers;
    this.#grpc = grpc;
    this.#metrics = metrics;
    this.#log = log;
  }

  static async start(options: ServeOptions): Promise<SnapshotterServer> {
    const { log } = options;
    const root = resolve(options.root);
    await mkdir(root, { recursive: true, mode: 0o700 });
    await claimRoot(root);
    const { address: _address, fuseManager: _fuseManager, cliPath: _cliPath, metricsAddress: _metrics, log: _log, onFatal: _onFatal, ...layerSettings } = options;
    const config: LayerServiceConfig = { ...layerSettings, root, cacheDir: resolve(options.cacheDir) };
    let backend: LayerBackend | undefined;
    let layers: RemoteLayerManager | undefined;
    let grpc: SnapshotsGrpcServer | undefined;
    try {
      const store = await MetadataStore.open(join(root, METADATA_DIR), {
        onCorrupt: (err) => log(`${err.message}; setting it aside (the snapshot is forgotten)`),
      });
      backend = await openBackend(options, config);
      layers = await RemoteLayerManager.open(config, backend, log);
      const snapshotter = new Snapshotter({ root, store, remote: layers, log });
      await snapshotter.init();
      const { restored, failed } = await snapshotter.restoreRemote();
      if (restored + failed > 0) log(`${store.size} snapshots; ${restored} remote snapshots mounted again${failed > 0 ? `, ${failed} failed` : ''}`);
      for (const digest of await layers.releaseUnused()) log(`layer ${digest} was mounted but no snapshot uses it: unmounted`);
      grpc = await SnapshotsGrpcServer.listen(snapshotter, options.address, log);
      const remote = layers;
      const metrics = options.metricsAddress
        ? await serveMetrics(options.metricsAddress, { layers: () => remote.metrics(), remoteSnapshots: () => snapshotter.remoteCount() })
        : undefined;
      const server = new SnapshotterServer(root, snapshotter, layers, grpc, metrics, log);
      if (backend instanceof FuseManagerClient) server.#watchManager(backend, options.onFatal);
      return server;
    } catch (err) {
      await grpc?.close().catch(() => undefined);
      await layers?.close().catch((e: unknown) => log(`unmounting after a failed start: ${errorMessage(e)}`));
      await removeFileDurably(root, PID_FILE).catch(() => undefined);
      throw err;
    }
  }

  get socket(): string {
    return this.#grpc.socket;
  }

  #watchManager(manager: FuseManagerClient, onFatal: ((reason: string) => void) | undefined): void {
    this.#watch = setInterval(() => {
      if (this.#stopping || manager.alive()) return;
      clearInterval(this.#watch);
      const reason = `the FUSE manager (pid ${manager.pid}) is gone: the layers it served are unreadable until serve starts again`;
      this.#log(reason);
      onFatal?.(reason);
    }, MANAGER_WATCH_INTERVAL_MS);
    this.#watch.unref();
  }

  /** Stops serving and unmounts every layer; metadata, saved tables and caches stay. Idempotent. */
  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      clearInterval(this.#watch);
      await this.#grpc.close();
      if (this.#metrics) {
        const metrics = this.#metrics;
        await new Promise<void>((res) => {
          metrics.close(() => res());
          metrics.closeAllConnections();
        });
      }
      try {
        await this.layers.close();
      } finally {
        await removeFileDurably(this.#root, PID_FILE).catch((err: unknown) => this.#log(`removing ${PID_FILE}: ${errorMessage(err)}`));
      }
    })();
    return this.#stopping;
  }
}

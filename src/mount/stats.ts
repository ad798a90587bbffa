// Mount statistics: the per-layer counters of the read path summed into a report, served by the mount
// process over HTTP on a unix socket in its private directory, and read by `erofs-lazy stats`.
import type { BackgroundFetchStatus } from '../prefetch/background.js';
import { createServer, request } from 'node:http';
import type { Server } from 'node:http';
import type { RegistryClientStats } from '../fetch/index.js';
import { rm } from 'node:fs/promises';
import { zeroReadCounters } from '../reader/types.js';
import type { LayerStats, ReadCounters } from '../reader/types.js';

/** How long `erofs-lazy stats` waits for the mount process to answer. */
const STATS_REQUEST_TIMEOUT_MS = 5_000;
const STATS_PATH = '/stats';

export interface MountStats {
  mountpoint: string;
  reference: string;
  manifestDigest: string;
  pid: number;
  uptimeSeconds: number;
  layers: LayerStats[];
  total: ReadCounters & {
    imageSize: number;
    blobSize: number;
    /** bytesFetched over the blob sizes of the lazy layers. */
    fractionFetched: number;
  };
  /** Registry client counters (retries, redirects, ignored ranges); absent for an OCI layout. */
  registry?: RegistryClientStats;
  memoryCache: { bytes: number; maxBytes: number };
  diskCache: { root: string; maxBytes: number; corruptEntries: number };
  /** Prefetch from a recorded profile, when one was found. */
  prefetch?: PrefetchStatus;
  /** Prefetch of the paths given with --prefetch-path. */
  pathPrefetch?: PrefetchStatus;
  /** Background fetch of the rest of the layers, when turned on. */
  background?: BackgroundFetchStatus;
}

export interface PrefetchStatus {
  /** Where the profile came from: a file path, or the registry artifact's digest. */
  source: string;
  /** Chunks the profile names for this image's lazy layers. */
  chunks: number;
  state: 'running' | 'done' | 'failed';
  /** Time from mount ready to the end of the prefetch. */
  ms?: number;
  error?: string;
}

export function summarize(layers: LayerStats[]): MountStats['total'] {
  const counters = zeroReadCounters();
  for (const key of Object.keys(counters) as Array<keyof ReadCounters>) {
    counters[key] = layers.reduce((sum, l) => sum + l[key], 0);
  }
  const lazy = layers.filter((l) => l.lazy);
  const lazyBlob = lazy.reduce((s, l) => s + l.blobSize, 0);
  return {
    ...counters,
    imageSize: layers.reduce((s, l) => s + l.imageSize, 0),
    blobSize: layers.reduce((s, l) => s + l.blobSize, 0),
    fractionFetched: lazyBlob === 0 ? 0 : lazy.reduce((s, l) => s + l.bytesFetched, 0) / lazyBlob,
  };
}

/** Serves `collect()` as JSON at /stats on a unix socket. */
export async function serveStats(socketPath: string, collect: () => MountStats): Promise<Server> {
  await rm(socketPath, { force: true });
  const server = createServer((req, res) => {
    if (req.method !== 'GET' || req.url !== STATS_PATH) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(collect()));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  return server;
}

export function fetchStats(socketPath: string): Promise<MountStats> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: STATS_PATH, method: 'GET', timeout: STATS_REQUEST_TIMEOUT_MS }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (res.statusCode !== 200) return reject(new Error(`mount process answered ${res.statusCode}`));
        try {
          resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')) as MountStats);
        } catch (err) {
          reject(new Error(`mount process sent unreadable stats: ${(err as Error).message}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`mount process did not answer within ${STATS_REQUEST_TIMEOUT_MS} ms`)));
    req.on('error', (err) => reject(new Error(`cannot reach the mount process at ${socketPath}: ${err.message}`)));
    req.end();
  });
}

// Prometheus metrics of `erofs-lazy serve`, in the text exposition format over node:http at /metrics:
// per layer (label layer="sha256:…") the read path counters of LazyLayer.stats() and the FUSE layer's
// stats, a read latency histogram with fixed buckets, and the number of remote snapshots.
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { LayerFilesystemStats } from '../fuse/index.js';
import type { LayerStats } from '../reader/index.js';

/** Upper bounds (seconds) of the read latency buckets: memory hits are sub-millisecond, registry reads 10-1000 ms. */
export const READ_LATENCY_BUCKETS_SECONDS: readonly number[] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30];
export const METRICS_PATH = '/metrics';
const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** A histogram's state: cumulative counts per upper bound (le), sum and count of the observations. */
export interface HistogramSnapshot {
  buckets: Array<{ le: number; count: number }>;
  sum: number;
  count: number;
}

/** A cumulative histogram with fixed bucket bounds. */
export class Histogram {
  readonly bounds: readonly number[];
  readonly #counts: number[];
  #sum = 0;
  #count = 0;

  constructor(bounds: readonly number[] = READ_LATENCY_BUCKETS_SECONDS) {
    this.bounds = bounds;
    this.#counts = bounds.map(() => 0);
  }

  observe(value: number): void {
    this.#sum += value;
    this.#count++;
    const i = this.bounds.findIndex((b) => value <= b);
    if (i >= 0) this.#counts[i]!++;
  }

  /** Cumulative counts per bound (le), then the total (le="+Inf"). */
  snapshot(): HistogramSnapshot {
    let running = 0;
    const buckets = this.bounds.map((le, i) => {
      running += this.#counts[i]!;
      return { le, count: running };
    });
    return { buckets, sum: this.#sum, count: this.#count };
  }
}

/** What the metrics show of one mounted layer. */
export interface LayerMetrics {
  layerDigest: string;
  stats: LayerStats;
  fuse: LayerFilesystemStats;
  latency: HistogramSnapshot;
}

export interface MetricsSource {
  layers(): LayerMetrics[] | Promise<LayerMetrics[]>;
  remoteSnapshots(): number;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatNumber(n: number): string {
  if (Number.isNaN(n)) return 'NaN';
  if (n === Number.POSITIVE_INFINITY) return '+Inf';
  return String(n);
}

interface Family {
  name: string;
  type: 'counter' | 'gauge' | 'histogram';
  help: string;
  samples: string[];
}

/** Renders the metrics in the Prometheus text format. */
export async function renderMetrics(source: MetricsSource): Promise<string> {
  const layers = await source.layers();
  const fam = (name: string, type: Family['type'], help: string): Family => ({ name, type, help, samples: [] });
  const counter = (name: string, help: string, value: (l: LayerMetrics) => number): Family => {
    const f = fam(name, 'counter', help);
    for (const l of layers) f.samples.push(`${name}{layer="${escapeLabel(l.layerDigest)}"} ${formatNumber(value(l))}`);
    return f;
  };
  const families: Family[] = [
    counter('erofs_lazy_fetched_bytes_total', 'Blob bytes fetched from the registry.', (l) => l.stats.bytesFetched),
    counter('erofs_lazy_fetch_requests_total', 'Range requests sent to the registry.', (l) => l.stats.requests),
    (() => {
      const f = fam('erofs_lazy_layer_blob_bytes', 'gauge', 'Size of the layer blob in the registry.');
      for (const l of layers) f.samples.push(`erofs_lazy_layer_blob_bytes{layer="${escapeLabel(l.layerDigest)}"} ${l.stats.blobSize}`);
      return f;
    })(),
    counter('erofs_lazy_fetch_retries_total', 'Fetches retried after a transient error or a failed verification.', (l) => l.stats.retries),
    counter('erofs_lazy_verification_failures_total', 'Fetched frames that failed their SHA-512 or decoding.', (l) => l.stats.verificationFailures),
    (() => {
      const f = fam('erofs_lazy_cache_hits_total', 'counter', 'Chunks served from the memory or disk cache.');
      for (const l of layers) {
        const layer = escapeLabel(l.layerDigest);
        f.samples.push(`erofs_lazy_cache_hits_total{layer="${layer}",cache="memory"} ${l.stats.memoryHits}`);
        f.samples.push(`erofs_lazy_cache_hits_total{layer="${layer}",cache="disk"} ${l.stats.diskHits}`);
      }
      return f;
    })(),
    counter('erofs_lazy_cache_misses_total', 'Chunks that had to be fetched from the registry (both caches missed).', (l) => l.stats.chunksFetched),
    counter('erofs_lazy_read_bytes_total', 'Bytes served to the kernel by the layer file.', (l) => l.stats.bytesServed),
    counter('erofs_lazy_read_errors_total', 'Layer file reads that failed (EIO).', (l) => l.stats.readErrors),
    counter('erofs_lazy_fuse_reads_total', 'FUSE read requests of the layer file.', (l) => l.fuse.reads),
    (() => {
      const f = fam('erofs_lazy_read_latency_seconds', 'histogram', 'Latency of FUSE reads of the layer file.');
      for (const l of layers) {
        const layer = escapeLabel(l.layerDigest);
        const h = l.latency;
        for (const b of h.buckets) f.samples.push(`erofs_lazy_read_latency_seconds_bucket{layer="${layer}",le="${formatNumber(b.le)}"} ${b.count}`);
        f.samples.push(`erofs_lazy_read_latency_seconds_bucket{layer="${layer}",le="+Inf"} ${h.count}`);
        f.samples.push(`erofs_lazy_read_latency_seconds_sum{layer="${layer}"} ${formatNumber(h.sum)}`);
        f.samples.push(`erofs_lazy_read_latency_seconds_count{layer="${layer}"} ${h.count}`);
      }
      return f;
    })(),
    (() => {
      const f = fam('erofs_lazy_remote_snapshots', 'gauge', 'Committed snapshots served lazily from seekable EROFS layers.');
      f.samples.push(`erofs_lazy_remote_snapshots ${source.remoteSnapshots()}`);
      return f;
    })(),
  ];
  return families.map((f) => [`# HELP ${f.name} ${f.help}`, `# TYPE ${f.name} ${f.type}`, ...f.samples].join('\n')).join('\n') + '\n';
}

/** Parses "HOST:PORT" (IPv6 hosts in brackets). */
export function parseListenAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d{1,5})$/.exec(address);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new Error(`metrics address ${JSON.stringify(address)} is not HOST:PORT`);
  return { host: m[1] ?? m[2]!, port };
}

/** Serves the metrics at http://address/metrics; resolves once listening. */
export async function serveMetrics(address: string, source: MetricsSource): Promise<Server> {
  const { host, port } = parseListenAddress(address);
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end();
      return;
    }
    if (path !== METRICS_PATH) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end(`not found; metrics are at ${METRICS_PATH}\n`);
      return;
    }
    renderMetrics(source).then(
      (body) => {
        res.writeHead(200, { 'content-type': CONTENT_TYPE, 'content-length': Buffer.byteLength(body) });
        res.end(req.method === 'HEAD' ? undefined : body);
      },
      (err: unknown) => {
        res.writeHead(500, { 'content-type': 'text/plain' }).end(`${err instanceof Error ? err.message : String(err)}\n`);
      },
    );
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

// Emulated registry link for the cold-start benchmark: a loopback HTTP reverse proxy in front of the
// local registry that adds a fixed delay to every request (the link's round trip) and sends every
// response body through one bandwidth limit shared by all responses (the link's capacity). Each
// response's body is written piece by piece in order (a response never has two writes in flight), so
// concurrent responses interleave on the shared link without reordering or truncation. It also counts
// requests and body bytes, which the benchmark reports as what a mode fetched from the registry.
import { once } from 'node:events';
import { Agent, createServer, request } from 'node:http';
import type { IncomingMessage, OutgoingHttpHeaders, Server, ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';

/** Largest piece of a body handed to the limiter at once (keeps interleaving fine-grained). */
export const PROXY_PIECE_BYTES = 16 * 1024;
/** How far (in link time) a sender may run ahead of the schedule: absorbs timer lateness, like a small queue. */
export const DEFAULT_BURST_MS = 4;
/** Path of a blob request in the distribution API. */
const BLOB_PATH = /\/blobs\/sha256:[0-9a-f]{64}$/;

export interface ThrottleOptions {
  /** host:port of the registry behind the proxy. */
  upstream: string;
  /** Delay added before each request is forwarded (one round trip). */
  latencyMs: number;
  /** Shared cap on response body bytes per second; undefined for none. */
  bytesPerSecond?: number;
  burstMs?: number;
}

export interface ProxyCounters {
  /** Every request the proxy answered or forwarded. */
  requests: number;
  /** GET requests for blobs (whole or ranged). */
  blobRequests: number;
  /** Response body bytes sent to clients. */
  bytes: number;
  /** Of which bodies of blob GETs. */
  blobBytes: number;
}

export interface ThrottleProxy {
  /** 127.0.0.1:port to use instead of the registry's address. */
  host: string;
  counters(): ProxyCounters;
  reset(): void;
  close(): Promise<void>;
}

/**
 * Lateness of a sender that the link forgives: when the proxy itself wakes late (a busy CPU), a real link
 * would have kept sending from its queue, so a response that made the last reservation continues from the
 * link's schedule instead of from now, up to this much.
 */
export const DEFAULT_FORGIVE_MS = 50;

/** A response's place on the link (the end of its last reservation). */
export interface LinkStream {
  end: number;
}

/**
 * A shared link: `take(n)` resolves when n more bytes may be sent. Virtual-clock reservation: the link is
 * busy until `busyUntil`; each reservation extends it by n/rate and waits until it is at most `burstMs`
 * ahead. Waking late never slows the link down, because the schedule does not depend on wake-up times.
 */
export class BandwidthLimiter {
  private busyUntil = 0;
  private readonly bytesPerMs: number;

  constructor(
    bytesPerSecond: number,
    private readonly burstMs: number = DEFAULT_BURST_MS,
    private readonly forgiveMs: number = DEFAULT_FORGIVE_MS,
  ) {
    if (!(bytesPerSecond > 0)) throw new Error(`bandwidth must be positive, got ${bytesPerSecond}`);
    this.bytesPerMs = bytesPerSecond / 1000;
  }

  async take(bytes: number, stream?: LinkStream): Promise<void> {
    const now = performance.now();
    let start = Math.max(this.busyUntil, now);
    if (stream && stream.end === this.busyUntil && now - this.busyUntil <= this.forgiveMs) start = this.busyUntil;
    this.busyUntil = start + bytes / this.bytesPerMs;
    if (stream) stream.end = this.busyUntil;
    const wait = this.busyUntil - now - this.burstMs;
    if (wait > 0) await sleep(wait);
  }
}

/** Resolves on the response's next 'drain' or 'close', leaving no listener behind. */
function drainedOrClosed(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function zeroCounters(): ProxyCounters {
  return { requests: 0, blobRequests: 0, bytes: 0, blobBytes: 0 };
}

export async function startThrottleProxy(options: ThrottleOptions): Promise<ThrottleProxy> {
  const [upHost, upPort] = splitHostPort(options.upstream);
  const limiter = options.bytesPerSecond ? new BandwidthLimiter(options.bytesPerSecond, options.burstMs) : undefined;
  const agent = new Agent({ keepAlive: true });
  let counters = zeroCounters();

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    counters.requests++;
    const isBlob = req.method === 'GET' && BLOB_PATH.test((req.url ?? '').split('?')[0]!);
    if (isBlob) counters.blobRequests++;
    if (options.latencyMs > 0) await sleep(options.latencyMs);
    const upReq = request({ host: upHost, port: upPort, method: req.method, path: req.url, headers: req.headers, agent });
    req.pipe(upReq);
    const [upRes] = (await once(upReq, 'response')) as [IncomingMessage];
    res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, upRes.headers as OutgoingHttpHeaders);
    res.on('close', () => {
      if (!res.writableFinished) upRes.destroy();
    });
    const stream: LinkStream = { end: -1 };
    for await (const chunk of upRes as AsyncIterable<Buffer>) {
      for (let off = 0; off < chunk.length; off += PROXY_PIECE_BYTES) {
        const piece = chunk.subarray(off, off + PROXY_PIECE_BYTES);
        if (limiter) await limiter.take(piece.length, stream);
        if (res.destroyed) return;
        counters.bytes += piece.length;
        if (isBlob) counters.blobBytes += piece.length;
        if (!res.write(piece)) await drainedOrClosed(res);
      }
    }
    res.end();
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: Error) => {
      if (!res.headersSent) res.writeHead(502).end(`proxy: ${err.message}`);
      else res.destroy(err);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  return {
    host: `127.0.0.1:${port}`,
    counters: () => ({ ...counters }),
    reset: () => {
      counters = zeroCounters();
    },
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      agent.destroy();
    },
  };
}

function splitHostPort(hostPort: string): [string, number] {
  const i = hostPort.lastIndexOf(':');
  const port = Number(hostPort.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port)) throw new Error(`proxy upstream must be host:port, got ${hostPort}`);
  return [hostPort.slice(0, i), port];
}

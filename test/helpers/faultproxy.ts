// Test helper: a fault-injecting HTTP proxy on 127.0.0.1 that sits between a registry client and a real
// registry. It forwards requests (method, path, headers, bodies streamed both ways, keep-alive), rewrites
// Location headers that point at the upstream so they point at the proxy, records what it saw (request
// counts per path, Range and Authorization headers), and applies fault rules matched by method and path:
// dropped bodies, stalls, canned statuses, 307 redirects to a second "blob storage" port, ignored or
// refused ranges, flipped bytes and throttled bodies. stopAccepting() makes the registry look unreachable.
import { Agent, createServer, request as httpRequest, type IncomingHttpHeaders, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { once } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';

/** Loopback address every listener of the proxy binds to. */
export const LOOPBACK = '127.0.0.1';
/** Body of a `status` fault when the rule gives none. */
export const DEFAULT_STATUS_BODY = 'fault injected by test proxy\n';
/** XOR mask of a `flip-bytes` fault when the rule gives none (changes every bit of the byte). */
export const DEFAULT_FLIP_MASK = 0xff;
/** A `slow` fault writes at most this many slices per second of budget, so each write is small. */
const SLOW_SLICES_PER_SECOND = 20;
/** Headers that belong to one connection and are never forwarded. */
const HOP_BY_HOP = new Set(['connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade']);

interface FaultMatch {
  /** HTTP method(s) the rule applies to (case-insensitive); every method when absent. */
  method?: string | readonly string[];
  /** Path (with query) the rule applies to, e.g. `/\/v2\/.+\/blobs\//`; every path when absent. */
  path?: RegExp;
  /** Apply to the next N matching requests only; always when absent. */
  count?: number;
}

export type FaultRule = FaultMatch &
  (
    | { kind: 'drop-mid-body'; /** bytes of body sent before the socket is destroyed */ afterBytes: number }
    | { kind: 'stall'; /** nothing is sent for this long, then the request is forwarded; forever when absent */ ms?: number }
    | { kind: 'status'; status: number; headers?: Readonly<Record<string, string>>; body?: string }
    | { kind: 'redirect' }
    | { kind: 'ignore-range' }
    | { kind: 'refuse-multirange' }
    | { kind: 'flip-bytes'; /** body offset to corrupt; a random one inside the body when absent */ offset?: number; mask?: number }
    | { kind: 'slow'; bytesPerSecond: number }
  );

export type FaultKind = FaultRule['kind'];

export interface RequestRecord {
  method: string;
  /** Path with query, as received. */
  url: string;
  range: string | undefined;
  authorization: boolean;
  /** The fault applied to this request, if any. */
  fault: FaultKind | undefined;
}

export interface FlipRecord {
  url: string;
  /** Body offset whose byte was XORed. */
  offset: number;
}

export interface ProxyCounters {
  /** Every request received, in arrival order. */
  readonly log: readonly RequestRecord[];
  /** Number of requests received. */
  readonly requests: number;
  /** Requests per path (without query). */
  readonly pathCounts: ReadonlyMap<string, number>;
  /** Range header values seen, in arrival order. */
  readonly rangeHeaders: readonly string[];
  /** Number of requests that carried an Authorization header. */
  readonly authorizationHeadersSeen: number;
}

export interface BlobStorage extends ProxyCounters {
  /** "127.0.0.1:PORT" of the redirect target. */
  readonly host: string;
}

export type UnreachableMode = 'refuse' | 'reset';

export interface FaultProxy extends ProxyCounters {
  /** "127.0.0.1:PORT" */
  readonly host: string;
  /** The second loopback server `redirect` faults point at. */
  readonly storage: BlobStorage;
  /** Bytes actually corrupted by `flip-bytes` faults. */
  readonly flips: readonly FlipRecord[];
  /** Replaces the fault rules; the first rule that matches (and has count left) applies. */
  setFaults(rules: readonly FaultRule[]): void;
  clearFaults(): void;
  /** How many times the rule at `index` of the last setFaults() has been applied. */
  appliedCount(index: number): number;
  /** Forgets the request log of the proxy and of the storage server. */
  resetCounters(): void;
  /**
   * Makes the proxy port look like an unreachable registry: 'refuse' (default) stops listening so connects
   * fail with ECONNREFUSED; 'reset' accepts connections and resets them at once. Open connections are cut.
   * The storage server is not affected.
   */
  stopAccepting(mode?: UnreachableMode): Promise<void>;
  resumeAccepting(): Promise<void>;
  close(): Promise<void>;
}

export interface FaultProxyOptions {
  /** "127.0.0.1:PORT" of the real registry. */
  upstream: string;
  /** Authorization the storage server adds on its own upstream requests (for registries with auth). */
  storageAuthorization?: string;
}

class Recorder implements ProxyCounters {
  log: RequestRecord[] = [];
  get requests(): number {
    return this.log.length;
  }
  get pathCounts(): ReadonlyMap<string, number> {
    const counts = new Map<string, number>();
    for (const r of this.log) {
      const path = r.url.split('?')[0]!;
      counts.set(path, (counts.get(path) ?? 0) + 1);
    }
    return counts;
  }
  get rangeHeaders(): readonly string[] {
    return this.log.flatMap((r) => (r.range === undefined ? [] : [r.range]));
  }
  get authorizationHeadersSeen(): number {
    return this.log.filter((r) => r.authorization).length;
  }
  record(req: IncomingMessage): RequestRecord {
    const entry: RequestRecord = {
      method: req.method ?? '',
      url: req.url ?? '/',
      range: req.headers.range,
      authorization: req.headers.authorization !== undefined,
      fault: undefined,
    };
    this.log.push(entry);
    return entry;
  }
}

/** How the response body of a forwarded request is altered on its way to the client. */
interface BodyPlan {
  dropAfter?: number;
  flip?: { offset?: number; mask: number };
  bytesPerSecond?: number;
}

function ruleMatches(rule: FaultRule, req: IncomingMessage): boolean {
  if (rule.method !== undefined) {
    const methods = typeof rule.method === 'string' ? [rule.method] : rule.method;
    if (!methods.some((m) => m.toUpperCase() === req.method)) return false;
  }
  if (rule.path !== undefined) {
    rule.path.lastIndex = 0;
    if (!rule.path.test(req.url ?? '/')) return false;
  }
  // A multi-range refusal only concerns requests that ask for more than one range.
  if (rule.kind === 'refuse-multirange') return isMultiRange(req.headers.range);
  return true;
}

function isMultiRange(range: string | undefined): boolean {
  return range !== undefined && range.split(',').filter((part) => part.trim() !== '').length > 1;
}

function forwardableHeaders(headers: IncomingHttpHeaders): OutgoingHttpHeaders {
  const out: OutgoingHttpHeaders = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) out[name] = value;
  }
  return out;
}

async function listen(server: Server, port = 0): Promise<number> {
  server.listen(port, LOOPBACK);
  await once(server, 'listening');
  return (server.address() as AddressInfo).port;
}

async function closeServer(server: Server): Promise<void> {
  if (!server.listening) return;
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeAllConnections();
  await closed;
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const upstream = options.upstream;
  const agent = new Agent({ keepAlive: true });
  const proxyLog = new Recorder();
  const storageLog = new Recorder();
  const flips: FlipRecord[] = [];
  let rules: { rule: FaultRule; remaining: number; applied: number }[] = [];
  let host = '';
  let storageHost = '';
  let unreachable: UnreachableMode | undefined;
  let closing = false;
  const pending = new Set<() => void>(); // stalls waiting forever, released by close()
  const sockets = new Set<Socket>();

  const rewriteLocation = (location: string, toHost: string): string => {
    for (const prefix of [`http://${upstream}`, `//${upstream}`]) {
      if (location.startsWith(prefix)) return `http://${toHost}${location.slice(prefix.length)}`;
    }
    return location;
  };

  /** Forwards `req` to the upstream and streams the answer back through `plan`. */
  const forward = (req: IncomingMessage, res: ServerResponse, viaHost: string, plan: BodyPlan, dropRange: boolean, extraAuth?: string): void => {
    const headers = forwardableHeaders(req.headers);
    headers.host = upstream;
    if (dropRange) {
      delete headers.range;
      delete headers['if-range'];
    }
    if (extraAuth !== undefined && headers.authorization === undefined) headers.authorization = extraAuth;
    const [upHost, upPort] = upstream.split(':');
    const upReq = httpRequest({ host: upHost, port: Number(upPort), method: req.method, path: req.url, headers, agent });
    res.on('close', () => {
      if (!res.writableFinished) upReq.destroy();
    });
    upReq.on('error', () => {
      if (!res.headersSent) {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end('upstream unreachable\n');
      } else {
        res.destroy();
      }
    });
    upReq.on('response', (upRes) => {
      const out = forwardableHeaders(upRes.headers);
      if (typeof out.location === 'string') out.location = rewriteLocation(out.location, viaHost);
      res.writeHead(upRes.statusCode ?? 502, upRes.statusMessage, out);
      void pump(req, upRes, res, plan);
    });
    req.pipe(upReq);
  };

  /** Copies the upstream body to the client in order, applying drop, flip and throttle. */
  const pump = async (req: IncomingMessage, upRes: IncomingMessage, res: ServerResponse, plan: BodyPlan): Promise<void> => {
    let sent = 0;
    const started = Date.now();
    let flipAt = plan.flip?.offset;
    if (plan.flip && flipAt === undefined) {
      const length = Number(upRes.headers['content-length']);
      flipAt = Number.isFinite(length) && length > 0 ? Math.floor(Math.random() * length) : 0;
    }
    const write = async (chunk: Buffer): Promise<void> => {
      if (res.write(chunk)) return;
      // Cancel the `once` that loses the race, or its listeners pile up on the response.
      const loser = new AbortController();
      await Promise.race([once(res, 'drain', { signal: loser.signal }), once(res, 'close', { signal: loser.signal })]).finally(() => loser.abort());
    };
    try {
      if (plan.dropAfter !== undefined) res.flushHeaders();
      for await (const data of upRes) {
        let chunk = data as Buffer;
        if (res.destroyed) break;
        if (plan.flip && flipAt !== undefined && flipAt >= sent && flipAt < sent + chunk.length) {
          chunk = Buffer.from(chunk);
          chunk[flipAt - sent] = chunk[flipAt - sent]! ^ plan.flip.mask;
          flips.push({ url: req.url ?? '/', offset: flipAt });
        }
        if (plan.dropAfter !== undefined && sent + chunk.length >= plan.dropAfter) {
          const head = chunk.subarray(0, plan.dropAfter - sent);
          if (head.length > 0) await new Promise<void>((resolve) => res.write(head, () => resolve()));
          upRes.destroy();
          res.socket?.destroy();
          return;
        }
        if (plan.bytesPerSecond !== undefined) {
          const slice = Math.max(1, Math.floor(plan.bytesPerSecond / SLOW_SLICES_PER_SECOND));
          for (let at = 0; at < chunk.length && !res.destroyed; at += slice) {
            const piece = chunk.subarray(at, at + slice);
            const due = started + ((sent + piece.length) * 1000) / plan.bytesPerSecond;
            const wait = due - Date.now();
            if (wait > 0) await sleep(wait);
            await write(piece);
            sent += piece.length;
          }
        } else {
          await write(chunk);
          sent += chunk.length;
        }
      }
      if (plan.dropAfter !== undefined) {
        // The body was shorter than the drop point: still cut the connection instead of finishing cleanly.
        res.socket?.destroy();
        return;
      }
      res.end();
    } catch {
      res.destroy();
    }
  };

  const answerStatus = (req: IncomingMessage, res: ServerResponse, rule: Extract<FaultRule, { kind: 'status' }>): void => {
    req.resume();
    const body = Buffer.from(rule.body ?? DEFAULT_STATUS_BODY);
    res.writeHead(rule.status, { 'content-type': 'text/plain', 'content-length': String(body.length), ...rule.headers });
    res.end(req.method === 'HEAD' ? undefined : body);
  };

  const handleProxy = (req: IncomingMessage, res: ServerResponse): void => {
    const entry = proxyLog.record(req);
    const slot = rules.find((s) => (s.remaining > 0) && ruleMatches(s.rule, req));
    if (!slot) return forward(req, res, host, {}, false);
    slot.remaining -= 1;
    slot.applied += 1;
    const rule = slot.rule;
    entry.fault = rule.kind;
    switch (rule.kind) {
      case 'drop-mid-body':
        return forward(req, res, host, { dropAfter: Math.max(0, rule.afterBytes) }, false);
      case 'stall': {
        let release = (): void => {};
        const done = new Promise<void>((resolve) => (release = resolve));
        pending.add(release);
        res.on('close', release);
        const timer = rule.ms === undefined ? undefined : setTimeout(release, rule.ms);
        void done.then(() => {
          pending.delete(release);
          if (timer) clearTimeout(timer);
          if (res.destroyed || closing) return void res.destroy();
          forward(req, res, host, {}, false);
        });
        return;
      }
      case 'status':
        return answerStatus(req, res, rule);
      case 'redirect':
        req.resume();
        res.writeHead(307, { location: `http://${storageHost}${req.url ?? '/'}`, 'content-length': '0' });
        return void res.end();
      case 'ignore-range':
        return forward(req, res, host, {}, true);
      case 'refuse-multirange':
        return answerStatus(req, res, { kind: 'status', status: 400, body: 'multiple ranges not supported\n' });
      case 'flip-bytes':
        return forward(req, res, host, { flip: { offset: rule.offset, mask: rule.mask ?? DEFAULT_FLIP_MASK } }, false);
      case 'slow':
        return forward(req, res, host, { bytesPerSecond: Math.max(1, rule.bytesPerSecond) }, false);
    }
  };

  const handleStorage = (req: IncomingMessage, res: ServerResponse): void => {
    storageLog.record(req);
    forward(req, res, storageHost, {}, false, options.storageAuthorization);
  };

  const server = createServer({ keepAlive: true }, handleProxy);
  server.on('connection', (socket: Socket) => {
    if (unreachable === 'reset') {
      socket.resetAndDestroy();
      return;
    }
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  const storage = createServer({ keepAlive: true }, handleStorage);
  storage.on('clientError', (_err, socket) => socket.destroy());

  const port = await listen(server);
  host = `${LOOPBACK}:${port}`;
  try {
    storageHost = `${LOOPBACK}:${await listen(storage)}`;
  } catch (err) {
    await closeServer(server);
    throw err;
  }

  const storageView: BlobStorage = {
    get host() {
      return storageHost;
    },
    get log() {
      return storageLog.log;
    },
    get requests() {
      return storageLog.requests;
    },
    get pathCounts() {
      return storageLog.pathCounts;
    },
    get rangeHeaders() {
      return storageLog.rangeHeaders;
    },
    get authorizationHeadersSeen() {
      return storageLog.authorizationHeadersSeen;
    },
  };

  return {
    get host() {
      return host;
    },
    storage: storageView,
    flips,
    get log() {
      return proxyLog.log;
    },
    get requests() {
      return proxyLog.requests;
    },
    get pathCounts() {
      return proxyLog.pathCounts;
    },
    get rangeHeaders() {
      return proxyLog.rangeHeaders;
    },
    get authorizationHeadersSeen() {
      return proxyLog.authorizationHeadersSeen;
    },
    setFaults(next) {
      rules = next.map((rule) => ({ rule, remaining: rule.count ?? Number.POSITIVE_INFINITY, applied: 0 }));
    },
    clearFaults() {
      rules = [];
    },
    appliedCount(index) {
      return rules[index]?.applied ?? 0;
    },
    resetCounters() {
      proxyLog.log = [];
      storageLog.log = [];
      flips.length = 0;
    },
    async stopAccepting(mode = 'refuse') {
      unreachable = mode;
      for (const socket of sockets) socket.destroy();
      if (mode === 'refuse') await closeServer(server);
      else if (!server.listening) await listen(server, port);
    },
    async resumeAccepting() {
      const wasRefusing = unreachable === 'refuse';
      unreachable = undefined;
      if (wasRefusing && !server.listening) await listen(server, port);
    },
    async close() {
      closing = true;
      for (const release of [...pending]) release();
      await Promise.all([closeServer(server), closeServer(storage)]);
      agent.destroy();
    },
  };
}

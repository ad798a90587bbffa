// Test helper: a real containerd (Debian's 1.6, through scripts/containerd) with its own config, root,
// state and socket under a fresh temp dir, erofs-lazy's snapshotter plugged in as a proxy plugin, and a
// `ctr` wrapper that always names this containerd and namespace (and, for `run`, keeps FIFOs and runc
// state under the temp dir). Its one t.after hook, in order: kills and deletes tasks, removes containers
// and images (`ctr i rm --sync`, so that the snapshotter drops their snapshots and mounts while it still
// runs), stops containerd, ends shims left behind, removes the shim sockets of its containers from
// /run/containerd/s (hard-coded there in containerd 1.6) and an empty /run/containerd, releases mounts
// below the dir and removes it. Start the snapshotter first (containerd's client to a proxy plugin dials at
// once and, finding no socket, stays in reconnect backoff for seconds), but register its cleanup after
// calling this, so that containerd's cleanup runs first.
import * as grpc from '@grpc/grpc-js';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, rm, rmdir, unlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SERVICE, containerdPackage } from '../../src/containerd/proto.js';
import { REPO_ROOT } from './registry.js';
import { releaseMountsBelow } from './tmp.js';

const CONTAINERD_SCRIPT = join(REPO_ROOT, 'scripts/containerd');
const CTR_TIMEOUT_MS = 180_000;
/** Where containerd 1.6 puts shim sockets, whatever its config says. */
export const SHIM_SOCKET_DIR = '/run/containerd/s';
const RUN_CONTAINERD = '/run/containerd';
export const DEFAULT_TEST_NAMESPACE = 'erofs-lazy-test';
export const PLUGIN_NAME = 'erofs-lazy';

export interface CtrResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface TestContainerd {
  /** The temp dir holding config, root, state, logs, fifo and runc dirs. */
  dir: string;
  /** containerd's gRPC socket. */
  address: string;
  namespace: string;
  /** Socket the erofs-lazy proxy plugin dials (where the test's `erofs-lazy serve` should listen). */
  snapshotterSocket: string;
  /** Runs ctr against this containerd; never throws (look at code). */
  ctr(args: string[], options?: { timeoutMs?: number }): Promise<CtrResult>;
  /** Runs ctr and throws (with its stderr) unless it exits 0; answers stdout. */
  ctrOk(args: string[], options?: { timeoutMs?: number }): Promise<string>;
  /** containerd's log so far (for assertion messages). */
  log(): Promise<string>;
  /** The /run/containerd/s sockets of the containers started through ctr() (gone after stop()). */
  shimSockets(): string[];
  /** The cleanup described in the header (also run by the test's t.after). */
  stop(): Promise<void>;
}

function exec(cmd: string, args: string[], timeoutMs: number): Promise<CtrResult> {
  return new Promise((resolve) => {
    execFile(cmd, args, { encoding: 'utf8', timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr: stderr || (err && code !== 0 && !stderr ? err.message : '') });
    });
  });
}

/** The socket path containerd 1.6 gives the shim of container `id` (runtime/v2/shim.SocketAddress). */
export function shimSocketPath(address: string, namespace: string, id: string): string {
  return join(SHIM_SOCKET_DIR, createHash('sha256').update(join(address, namespace, id)).digest('hex'));
}

/** Options of `ctr run` that take a value (to find the container id among the positionals). */
const RUN_VALUE_OPTIONS = new Set([
  '--snapshotter', '--fifo-dir', '--runc-root', '--cwd', '--env', '--env-file', '--label', '--mount', '--user', '--runtime',
  '--runtime-config-path', '--sandbox', '--platform', '--memory-limit', '--cpus', '--cpu-shares', '--cgroup', '--hostname',
  '--log-uri', '--device', '--seccomp-profile', '--apparmor-profile', '--apparmor-default-profile', '--rootfs-propagation',
  '--with-ns', '--pid-file', '--gpus', '--runc-binary', '--snapshotter-label', '--uidmap', '--gidmap', '--annotation',
  '--cap-add', '--cap-drop', '--cpu-quota', '--cpu-period', '--allow-new-privs', '--checkpoint',
]);

/** The container id of a `ctr run` argument list (the second positional after `run`). */
export function runContainerId(runArgs: string[]): string | undefined {
  const positionals: string[] = [];
  for (let i = 0; i < runArgs.length; i++) {
    const a = runArgs[i]!;
    if (a === '--') {
      positionals.push(...runArgs.slice(i + 1));
      break;
    }
    if (a.startsWith('-')) {
      if (!a.includes('=') && RUN_VALUE_OPTIONS.has(a)) i++;
      continue;
    }
    positionals.push(a);
  }
  return positionals[1];
}

export async function startContainerd(
  t: { after(fn: () => unknown): void },
  options: { namespace?: string; snapshotterSocket?: string } = {},
): Promise<TestContainerd> {
  const dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-ctd-'));
  const namespace = options.namespace ?? DEFAULT_TEST_NAMESPACE;
  const snapshotterSocket = options.snapshotterSocket ?? join(dir, 'erofs-lazy.sock');
  const containerIds = new Set<string>();
  let address = join(dir, 'containerd.sock');
  let stopped: Promise<void> | undefined;

  const ctr = async (args: string[], opts: { timeoutMs?: number } = {}): Promise<CtrResult> => {
    let full = args;
    if (args[0] === 'run' || (args[0] === 'containers' && args[1] === 'create') || (args[0] === 'c' && args[1] === 'create')) {
      const at = args[0] === 'run' ? 1 : 2;
      const rest = args.slice(at);
      const id = runContainerId(rest);
      if (id) containerIds.add(id);
      const extra = args[0] === 'run' ? ['--fifo-dir', join(dir, 'fifo'), '--runc-root', join(dir, 'runc')] : [];
      full = [...args.slice(0, at), ...extra, ...rest];
    }
    return exec('ctr', ['--address', address, '--namespace', namespace, ...full], opts.timeoutMs ?? CTR_TIMEOUT_MS);
  };
  const ctrOk = async (args: string[], opts: { timeoutMs?: number } = {}): Promise<string> => {
    const r = await ctr(args, opts);
    if (r.code !== 0) throw new Error(`ctr ${args.join(' ')} exited ${r.code}: ${r.stderr.trim() || r.stdout.trim()}`);
    return r.stdout;
  };

  const cleanup = async (): Promise<void> => {
    const problems: string[] = [];
    const lines = (s: string): string[] => s.split('\n').map((l) => l.trim()).filter(Boolean);
    const alive = (await exec(CONTAINERD_SCRIPT, ['status', '--dir', dir], 10_000)).code === 0;
    if (alive) {
      const base = ['--address', address];
      const namespaces = lines((await exec('ctr', [...base, 'namespaces', 'ls', '-q'], 30_000)).stdout);
      for (const ns of namespaces) {
        const n = [...base, '--namespace', ns];
        for (const task of lines((await exec('ctr', [...n, 'tasks', 'ls', '-q'], 30_000)).stdout)) {
          await exec('ctr', [...n, 'tasks', 'kill', '-a', '-s', 'SIGKILL', task], 30_000);
          let removed = false;
          for (let i = 0; i < 30 && !removed; i++) {
            removed = (await exec('ctr', [...n, 'tasks', 'rm', '-f', task], 30_000)).code === 0;
            if (!removed) await new Promise((r) => setTimeout(r, 100));
          }
          if (!removed) problems.push(`task ${ns}/${task} not removed`);
        }
        for (const c of lines((await exec('ctr', [...n, 'containers', 'ls', '-q'], 30_000)).stdout)) {
          const r = await exec('ctr', [...n, 'containers', 'rm', c], 60_000);
          if (r.code !== 0) problems.push(`container ${ns}/${c}: ${r.stderr.trim()}`);
        }
        for (const image of lines((await exec('ctr', [...n, 'images', 'ls', '-q'], 30_000)).stdout)) {
          const r = await exec('ctr', [...n, 'images', 'rm', '--sync', image], 120_000);
          if (r.code !== 0) problems.push(`image ${ns}/${image}: ${r.stderr.trim()}`);
        }
      }
    }
    await exec(CONTAINERD_SCRIPT, ['stop', '--dir', dir], 60_000);
    // Shims of this containerd that are still there (a task it could not delete): by pid, found by our socket.
    const ps = await exec('ps', ['-eo', 'pid=,args='], 10_000);
    for (const line of lines(ps.stdout)) {
      const [pid, ...rest] = line.split(/\s+/);
      const args = rest.join(' ');
      if (/containerd-shim/.test(args) && args.includes(` -address ${address}`)) {
        try {
          process.kill(Number(pid), 'SIGKILL');
        } catch {
          // Already gone.
        }
        problems.push(`shim left running: ${args}`);
      }
    }
    for (const id of containerIds) {
      await unlink(shimSocketPath(address, namespace, id)).catch(() => undefined);
    }
    // Empty ones only: a containerd of the machine (if any) keeps its socket in /run/containerd.
    for (const path of [SHIM_SOCKET_DIR, RUN_CONTAINERD]) {
      if (existsSync(path) && readdirSync(path).length === 0) await rmdir(path).catch(() => undefined);
    }
    releaseMountsBelow(dir);
    await rm(dir, { recursive: true, force: true });
    if (problems.length > 0) throw new Error(`containerd cleanup: ${problems.join('; ')}`);
  };

  const stop = (): Promise<void> => (stopped ??= cleanup());
  t.after(stop);

  const started = await exec(CONTAINERD_SCRIPT, ['start', '--dir', dir, '--snapshotter-socket', snapshotterSocket, '--plugin-name', PLUGIN_NAME], 60_000);
  if (started.code !== 0) throw new Error(`scripts/containerd start failed: ${started.stderr.trim()}`);
  address = started.stdout.trim();

  return {
    dir,
    address,
    namespace,
    snapshotterSocket,
    ctr,
    ctrOk,
    async log() {
      const r = await exec('tail', ['-n', '60', join(dir, 'logs/containerd.log')], 10_000);
      return r.stdout;
    },
    shimSockets() {
      return [...containerIds].map((id) => shimSocketPath(address, namespace, id));
    },
    stop,
  };
}

// ---------------------------------------------------------------------------------------------------
// A fake containerd for unit tests: an in-process gRPC server (grpc-js, the same protos) on a unix socket,
// with in-memory content, images, leases and snapshots, a "remote snapshotter" that takes the layers
// named in `remoteLayers` (as erofs-lazy serve would: commit under containerd.io/snapshot.ref, answer
// ALREADY_EXISTS), a diff service that answers the layer's containerd.io/uncompressed label, and a log
// of every call with its namespace and lease headers.

export interface FakeCall {
  method: string;
  namespace: string | undefined;
  lease: string | undefined;
  request: Record<string, unknown>;
}

export interface FakeSnapshot {
  snapshotter: string;
  key: string;
  parent: string;
  kind: 'ACTIVE' | 'COMMITTED' | 'VIEW';
  labels: Record<string, string>;
}

export interface FakeContainerd {
  address: string;
  calls: FakeCall[];
  content: Map<string, { data: Buffer; labels: Record<string, string> }>;
  images: Map<string, { name: string; target: Record<string, unknown>; labels: Record<string, string> }>;
  leases: Map<string, Record<string, string>>;
  snapshots: Map<string, FakeSnapshot>;
  /** Layer digests the fake snapshotter mounts remotely. */
  remoteLayers: Set<string>;
  /** Answers this many Write streams with UNAVAILABLE "ref … locked" (another writer holds the ref). */
  lockedWrites: number;
  /** Makes the next Diff/Apply fail with this gRPC code. */
  failApplyWith?: number;
  /** Bytes per Write message seen, in order. */
  writeChunkSizes: number[];
  close(): Promise<void>;
}

type Unary = (call: { request: Record<string, unknown>; metadata: { get(k: string): unknown[] } }, cb: (err: unknown, res?: unknown) => void) => void;

export async function startFakeContainerd(t: { after(fn: () => unknown): void }): Promise<FakeContainerd> {
  const dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-fakectd-'));
  const address = join(dir, 'containerd.sock');
  const pkg = containerdPackage();
  const server = new grpc.Server();
  const fake: FakeContainerd = {
    address,
    calls: [],
    content: new Map(),
    images: new Map(),
    leases: new Map(),
    snapshots: new Map(),
    remoteLayers: new Set(),
    lockedWrites: 0,
    writeChunkSizes: [],
    async close() {
      await new Promise<void>((r) => server.tryShutdown(() => r()));
      await rm(dir, { recursive: true, force: true });
    },
  };
  const st = grpc.status;
  const fail = (code: number, details: string): Error & { code: number; details: string } => Object.assign(new Error(details), { code, details });
  const header = (md: { get(k: string): unknown[] }, k: string): string | undefined => {
    const v = md.get(k)[0];
    return v === undefined ? undefined : String(v);
  };
  const log = (method: string, md: { get(k: string): unknown[] }, request: Record<string, unknown>): void => {
    fake.calls.push({ method, namespace: header(md, 'containerd-namespace'), lease: header(md, 'containerd-lease'), request });
  };
  const unary = (method: string, fn: (req: Record<string, unknown>) => unknown): Unary => (call, cb) => {
    log(method, call.metadata, call.request);
    try {
      cb(null, fn(call.request));
    } catch (err) {
      cb(err);
    }
  };
  const snapKey = (snapshotter: unknown, key: unknown): string => `${String(snapshotter)}/${String(key)}`;
  const info = (s: FakeSnapshot): Record<string, unknown> => ({ name: s.key, parent: s.parent, kind: s.kind, labels: s.labels });
  const def = (name: string): grpc.ServiceDefinition => pkg[name] as unknown as grpc.ServiceDefinition;

  server.addService(def(SERVICE.leases), {
    Create: unary('Leases/Create', (req) => {
      const id = String(req.id || `lease-${fake.leases.size + 1}`);
      fake.leases.set(id, req.labels as Record<string, string>);
      return { lease: { id, labels: req.labels } };
    }),
    Delete: unary('Leases/Delete', (req) => {
      fake.leases.delete(String(req.id));
      return {};
    }),
    List: unary('Leases/List', () => ({ leases: [...fake.leases].map(([id, labels]) => ({ id, labels })) })),
  } as unknown as grpc.UntypedServiceImplementation);

  server.addService(def(SERVICE.content), {
    Info: unary('Content/Info', (req) => {
      const c = fake.content.get(String(req.digest));
      if (!c) throw fail(st.NOT_FOUND, `content digest ${String(req.digest)}: not found`);
      return { info: { digest: req.digest, size: c.data.length, labels: c.labels } };
    }),
    Update: unary('Content/Update', (req) => {
      const i = req.info as { digest: string; labels: Record<string, string> };
      const c = fake.content.get(i.digest);
      if (!c) throw fail(st.NOT_FOUND, 'not found');
      for (const p of (req.update_mask as { paths: string[] }).paths) {
        if (p.startsWith('labels.')) c.labels[p.slice(7)] = i.labels[p.slice(7)]!;
      }
      return { info: { digest: i.digest, size: c.data.length, labels: c.labels } };
    }),
    Delete: unary('Content/Delete', (req) => {
      fake.content.delete(String(req.digest));
      return {};
    }),
    Read: (call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) => {
      log('Content/Read', call.metadata, call.request);
      const c = fake.content.get(String(call.request.digest));
      if (!c) return call.emit('error', fail(st.NOT_FOUND, 'not found'));
      call.write({ offset: 0, data: c.data });
      call.end();
    },
    Write: (call: grpc.ServerDuplexStream<Record<string, unknown>, unknown>) => {
      const parts: Buffer[] = [];
      let first = true;
      call.on('data', (req: Record<string, unknown>) => {
        log('Content/Write', call.metadata, { ...req, data: undefined, dataLength: (req.data as Buffer).length });
        if (first) {
          first = false;
          if (fake.lockedWrites > 0) {
            fake.lockedWrites--;
            call.emit('error', fail(st.UNAVAILABLE, `ref ${String(req.ref)} locked for 1.2s (since now): unavailable`));
            return;
          }
          if (fake.content.has(String(req.expected))) {
            call.emit('error', fail(st.ALREADY_EXISTS, `content ${String(req.expected)}: already exists`));
            return;
          }
        }
        const data = req.data as Buffer;
        if (req.action === 'WRITE') {
          fake.writeChunkSizes.push(data.length);
          const offset = parts.reduce((n, p) => n + p.length, 0);
          if (Number(req.offset) !== offset) return call.emit('error', fail(st.OUT_OF_RANGE, `write @${String(req.offset)} must occur at ${offset}`));
          parts.push(data);
        }
        if (req.action === 'COMMIT') {
          const all = Buffer.concat(parts);
          const digest = `sha256:${createHash('sha256').update(all).digest('hex')}`;
          if (digest !== req.expected || all.length !== Number(req.total)) {
            return call.emit('error', fail(st.FAILED_PRECONDITION, `unexpected commit digest ${digest}`));
          }
          fake.content.set(digest, { data: all, labels: { ...(req.labels as Record<string, string>) } });
        }
        call.write({ action: req.action, offset: parts.reduce((n, p) => n + p.length, 0), total: req.total, digest: '' });
      });
      call.on('end', () => call.end());
    },
    Abort: unary('Content/Abort', () => ({})),
  } as unknown as grpc.UntypedServiceImplementation);

  server.addService(def(SERVICE.images), {
    Get: unary('Images/Get', (req) => {
      const i = fake.images.get(String(req.name));
      if (!i) throw fail(st.NOT_FOUND, 'image not found');
      return { image: i };
    }),
    List: unary('Images/List', () => ({ images: [...fake.images.values()] })),
    Create: unary('Images/Create', (req) => {
      const i = req.image as { name: string; target: Record<string, unknown>; labels: Record<string, string> };
      if (fake.images.has(i.name)) throw fail(st.ALREADY_EXISTS, `image ${i.name}: already exists`);
      fake.images.set(i.name, i);
      return { image: i };
    }),
    Update: unary('Images/Update', (req) => {
      const i = req.image as { name: string; target: Record<string, unknown>; labels: Record<string, string> };
      if (!fake.images.has(i.name)) throw fail(st.NOT_FOUND, 'image not found');
      fake.images.set(i.name, i);
      return { image: i };
    }),
    Delete: unary('Images/Delete', (req) => {
      fake.images.delete(String(req.name));
      return {};
    }),
  } as unknown as grpc.UntypedServiceImplementation);

  server.addService(def(SERVICE.snapshots), {
    Prepare: unary('Snapshots/Prepare', (req) => {
      const labels = req.labels as Record<string, string>;
      const k = snapKey(req.snapshotter, req.key);
      if (fake.snapshots.has(k)) throw fail(st.ALREADY_EXISTS, `snapshot ${String(req.key)}: already exists`);
      if (req.parent && !fake.snapshots.has(snapKey(req.snapshotter, req.parent))) throw fail(st.NOT_FOUND, `parent ${String(req.parent)} not found`);
      const target = labels['containerd.io/snapshot.ref'];
      if (target && fake.remoteLayers.has(labels['containerd.io/snapshot/cri.layer-digest'] ?? '')) {
        fake.snapshots.set(snapKey(req.snapshotter, target), { snapshotter: String(req.snapshotter), key: target, parent: String(req.parent), kind: 'COMMITTED', labels });
        throw fail(st.ALREADY_EXISTS, `target snapshot ${target}: already exists`);
      }
      fake.snapshots.set(k, { snapshotter: String(req.snapshotter), key: String(req.key), parent: String(req.parent), kind: 'ACTIVE', labels });
      return { mounts: [{ type: 'bind', source: `/fake/${String(req.key)}`, target: '', options: ['rw', 'rbind'] }] };
    }),
    View: unary('Snapshots/View', () => {
      throw fail(st.UNIMPLEMENTED, 'no views here');
    }),
    Mounts: unary('Snapshots/Mounts', (req) => {
      if (!fake.snapshots.has(snapKey(req.snapshotter, req.key))) throw fail(st.NOT_FOUND, 'not found');
      return { mounts: [{ type: 'bind', source: `/fake/${String(req.key)}`, target: '', options: ['ro', 'rbind'] }] };
    }),
    Commit: unary('Snapshots/Commit', (req) => {
      const active = fake.snapshots.get(snapKey(req.snapshotter, req.key));
      if (!active || active.kind !== 'ACTIVE') throw fail(st.NOT_FOUND, `active ${String(req.key)} not found`);
      if (fake.snapshots.has(snapKey(req.snapshotter, req.name))) throw fail(st.ALREADY_EXISTS, `snapshot ${String(req.name)}: already exists`);
      fake.snapshots.delete(snapKey(req.snapshotter, req.key));
      fake.snapshots.set(snapKey(req.snapshotter, req.name), { ...active, key: String(req.name), kind: 'COMMITTED', labels: req.labels as Record<string, string> });
      return {};
    }),
    Remove: unary('Snapshots/Remove', (req) => {
      if (!fake.snapshots.delete(snapKey(req.snapshotter, req.key))) throw fail(st.NOT_FOUND, 'not found');
      return {};
    }),
    Stat: unary('Snapshots/Stat', (req) => {
      const s = fake.snapshots.get(snapKey(req.snapshotter, req.key));
      if (!s) throw fail(st.NOT_FOUND, `snapshot ${String(req.key)} does not exist: not found`);
      return { info: info(s) };
    }),
    List: (call: grpc.ServerWritableStream<Record<string, unknown>, unknown>) => {
      log('Snapshots/List', call.metadata, call.request);
      const all = [...fake.snapshots.values()].filter((s) => s.snapshotter === call.request.snapshotter).map(info);
      // Two messages, as containerd splits long lists.
      call.write({ info: all.slice(0, 1) });
      call.write({ info: all.slice(1) });
      call.end();
    },
  } as unknown as grpc.UntypedServiceImplementation);

  server.addService(def(SERVICE.diff), {
    Apply: unary('Diff/Apply', (req) => {
      if (fake.failApplyWith !== undefined) {
        const code = fake.failApplyWith;
        fake.failApplyWith = undefined;
        throw fail(code, 'apply failed on purpose');
      }
      const d = req.diff as { digest: string };
      const c = fake.content.get(d.digest);
      if (!c) throw fail(st.NOT_FOUND, `content ${d.digest}: not found`);
      return { applied: { media_type: 'application/vnd.oci.image.layer.v1.tar', digest: c.labels['containerd.io/uncompressed'] ?? '', size: 0, annotations: {} } };
    }),
  } as unknown as grpc.UntypedServiceImplementation);

  await new Promise<void>((resolve, reject) =>
    server.bindAsync(`unix://${address}`, grpc.ServerCredentials.createInsecure(), (err) => (err ? reject(err) : resolve())),
  );
  t.after(() => fake.close());
  return fake;
}

// `erofs-lazy serve`: the containerd remote snapshotter (containerd's snapshots API over gRPC on a unix
// socket, plugged in as `[proxy_plugins.erofs-lazy]`), serving seekable EROFS layers lazily and every other
// layer the way containerd's overlayfs snapshotter does. Runs in the foreground, logs to stderr, and unmounts
// what it mounted on SIGTERM/SIGINT (exit 0); see src/snapshotter. Also the hidden `serve-fuse-manager`,
// the detached process serve starts to keep the layers' FUSE mounts alive across a serve crash.
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import type { Argv } from 'yargs';
import { DEFAULT_CACHE_DIR, DEFAULT_DISK_CACHE_MAX_BYTES, DEFAULT_MEMORY_CACHE_BYTES } from '../cache/index.js';
import { notifyParent } from '../mount/daemon.js';
import { DEFAULT_MOUNT_TIMEOUT_MS } from '../mount/server.js';
import { DEFAULT_READ_DEADLINE_MS } from '../reader/index.js';
import { FUSE_MANAGER_COMMAND, runFuseManager } from '../snapshotter/fusemanager.js';
import { DEFAULT_SNAPSHOTTER_ROOT, SnapshotterServer } from '../snapshotter/server.js';
import { hostsDirOption, platformOption, withImageAccess } from './common.js';
import { oneLineError } from './output.js';

/** Exit code when serving cannot go on (the FUSE manager died). */
const EXIT_FATAL = 1;

function timestampedLog(line: string): void {
  process.stderr.write(`${new Date().toISOString()} ${line}\n`);
}

export function registerServe<T>(parser: Argv<T>): Argv<T> {
  return parser
    .command(
      'serve',
      'run the containerd remote snapshotter (proxy plugin "erofs-lazy") on a unix socket',
      (c) =>
        withImageAccess(c)
          .option('address', { type: 'string', demandOption: true, describe: "unix socket to serve containerd's snapshots API on" })
          .option('root', { type: 'string', default: DEFAULT_SNAPSHOTTER_ROOT, describe: 'snapshot metadata and directories' })
          .option('cache-dir', { type: 'string', default: DEFAULT_CACHE_DIR, describe: 'chunk cache shared with `erofs-lazy mount`' })
          .option('cache-max-bytes', { type: 'number', default: DEFAULT_DISK_CACHE_MAX_BYTES, describe: 'bound of the on-disk chunk cache' })
          .option('memory-cache-bytes', { type: 'number', default: DEFAULT_MEMORY_CACHE_BYTES, describe: 'bound of the in-memory chunk cache' })
          .option('read-timeout', { type: 'number', default: DEFAULT_READ_DEADLINE_MS / 1000, describe: 'seconds a read may take, retries included, before it fails with EIO' })
          .option('mount-timeout', { type: 'number', default: DEFAULT_MOUNT_TIMEOUT_MS / 1000, describe: 'seconds the registry may take to answer while a layer is set up' })
          .option('fuse-manager', {
            type: 'boolean',
            default: true,
            describe: 'serve the layers from a detached FUSE manager that outlives a serve crash (--no-fuse-manager: from this process)',
          })
          .option('metrics-address', { type: 'string', describe: 'HOST:PORT to serve Prometheus metrics on (/metrics)' })
          .option('prefetch', { type: 'boolean', default: true, describe: 'prefetch each remote layer from the profile stored with its image (--no-prefetch: off)' })
          .option('multi-range', { type: 'boolean', default: false, describe: 'fetch distant runs of missing chunks in one multi-range request' }),
      async (args) => {
        await mkdir(args['cache-dir'], { recursive: true });
        const server = await SnapshotterServer.start({
          address: resolve(args.address),
          root: resolve(args.root),
          cacheDir: resolve(args['cache-dir']),
          cacheMaxBytes: args['cache-max-bytes'],
          memoryCacheBytes: args['memory-cache-bytes'],
          registry: { plainHttp: args['plain-http'], hostsDir: hostsDirOption(args['hosts-dir']), platform: platformOption(args.platform) },
          readDeadlineMs: args['read-timeout'] * 1000,
          mountTimeoutMs: args['mount-timeout'] * 1000,
          prefetch: args.prefetch,
          multiRange: args['multi-range'],
          fuseManager: args['fuse-manager'],
          cliPath: resolve(process.argv[1]!),
          metricsAddress: args['metrics-address'],
          log: timestampedLog,
          onFatal: () => {
            timestampedLog('exiting; start serve again to mount the layers again');
            process.exit(EXIT_FATAL);
          },
        });
        timestampedLog(`serving containerd snapshots on ${server.socket}${args['metrics-address'] ? `, metrics on http://${args['metrics-address']}/metrics` : ''}`);
        const code = await new Promise<number>((done) => {
          const onSignal = (signal: string): void => {
            timestampedLog(`${signal}: stopping`);
            server.stop().then(
              () => done(0),
              (err: unknown) => {
                timestampedLog(`stopping left something behind: ${oneLineError(err)}`);
                done(1);
              },
            );
          };
          process.once('SIGTERM', () => onSignal('SIGTERM'));
          process.once('SIGINT', () => onSignal('SIGINT'));
        });
        timestampedLog(code === 0 ? 'stopped' : 'stopped with errors');
        // FUSE handles of mounts cut loose from running containers would keep node alive.
        process.exit(code);
      },
    )
    .command(
      FUSE_MANAGER_COMMAND,
      false,
      (c) =>
        c
          .option('root', { type: 'string', demandOption: true })
          .option('foreground', { type: 'boolean', default: true })
          .option('ready-fd', { type: 'number' }),
      async (args) => {
        const readyFd = args['ready-fd'];
        let code: number;
        try {
          code = await runFuseManager(resolve(args.root), timestampedLog, async (pid) => {
            if (readyFd !== undefined) await notifyParent(readyFd, { ready: true, pid });
          });
        } catch (err) {
          if (readyFd !== undefined) await notifyParent(readyFd, { error: oneLineError(err) });
          throw err;
        }
        timestampedLog('FUSE manager stopped');
        process.exit(code);
      },
    ) as Argv<T>;
}

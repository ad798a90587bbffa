// What `erofs-lazy serve` does (its options are in serve.ts): run the containerd snapshotter in the
// foreground, logging to stderr, and unmount what it mounted on SIGTERM/SIGINT (exit 0); see src/snapshotter.
import { mkdir } from 'node:fs/promises';
import { resolve } from 'node:path';
import { SnapshotterServer } from '../snapshotter/server.js';
import type { ImageAccessArgs } from './common.js';
import { hostsDirOption, platformOption } from './imageargs.js';
import { oneLineError, timestampedLog } from './output.js';

/** Exit code when serving cannot go on (the FUSE manager died). */
const EXIT_FATAL = 1;

export interface ServeArgs extends ImageAccessArgs {
  address: string;
  root: string;
  'cache-dir': string;
  'cache-max-bytes': number;
  'memory-cache-bytes': number;
  'read-timeout': number;
  'mount-timeout': number;
  'fuse-manager': boolean;
  'metrics-address'?: string;
  prefetch: boolean;
  'multi-range': boolean;
  'prefetch-path'?: string[];
}

export async function runServe(args: ServeArgs): Promise<void> {
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
    prefetchPaths: args['prefetch-path'],
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
}

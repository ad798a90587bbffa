// What the CLI loads at start-up: `--version`, `--help` and the help of the mount and serve commands load
// only the argument parser and the command definitions (no gRPC, protobuf, registry client, snapshotter or
// mount server); a command loads its own module when it runs; every default --help shows equals the value
// of the module that uses it (src/cli/defaults.ts copies them to keep start-up light).
// Modules are traced with a module-loader hook (node --import, passed to child processes through
// NODE_OPTIONS) that appends "pid url" for each module the ESM loader loads. Packages written as CommonJS
// (undici, @grpc/grpc-js) show up by their entry module, which an ESM import goes through.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import type { TestContext } from 'node:test';
import * as chunktable from '../../src/chunktable/index.js';
import * as cacheDisk from '../../src/cache/disk.js';
import * as cacheMemory from '../../src/cache/memory.js';
import * as defaults from '../../src/cli/defaults.js';
import * as containerd from '../../src/containerd/index.js';
import * as hosts from '../../src/fetch/hosts.js';
import * as reference from '../../src/fetch/reference.js';
import * as mountServer from '../../src/mount/server.js';
import * as mountState from '../../src/mount/state.js';
import * as background from '../../src/prefetch/background.js';
import * as reader from '../../src/reader/index.js';
import * as fusemanager from '../../src/snapshotter/fusemanager.js';
import * as snapshotter from '../../src/snapshotter/server.js';
import * as dmverity from '../../src/verity/dmverity.js';
import { CLI_PATH } from '../helpers/cli.js';
import { tempDir } from '../helpers/tmp.js';

const CLI_TIMEOUT_MS = 60_000;

/** Modules that only the commands needing them may load. */
const HEAVY_MODULES: Array<[string, RegExp]> = [
  ['@grpc/grpc-js', /\/node_modules\/@grpc\//],
  ['protobufjs', /\/node_modules\/protobufjs\//],
  ['undici', /\/node_modules\/undici\//],
  ['the snapshotter', /\/dist\/src\/snapshotter\//],
  ['containerd client', /\/dist\/src\/containerd\//],
  ['the mount server', /\/dist\/src\/mount\/server\.js$/],
  ['the registry client', /\/dist\/src\/fetch\/(registry|http|open)\.js$/],
  ['the reader', /\/dist\/src\/reader\//],
];

interface TracedRun {
  code: number;
  stdout: string;
  stderr: string;
  /** Loaded module URLs by process id. */
  loads: Map<number, string[]>;
  pid: number;
}

/** Writes the loader hook into `dir`; returns the --import argument that installs it. */
async function writeHook(dir: string): Promise<string> {
  const hooks = join(dir, 'hooks.mjs');
  const register = join(dir, 'register.mjs');
  await writeFile(
    hooks,
    [
      "import { appendFileSync } from 'node:fs';",
      'export async function load(url, context, next) {',
      '  appendFileSync(process.env.CLI_STARTUP_TRACE, `${process.pid} ${url}\\n`);',
      '  return next(url, context);',
      '}',
      '',
    ].join('\n'),
  );
  await writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hooks}`)});\n`);
  return register;
}

async function tracedCli(t: TestContext, args: string[]): Promise<TracedRun> {
  const dir = await tempDir(t, 'erofs-lazy-cli-startup-');
  const register = await writeHook(dir);
  const trace = join(dir, 'trace.log');
  const env = { ...process.env, CLI_STARTUP_TRACE: trace, NODE_OPTIONS: `--import "${register}"` };
  const result = await new Promise<Omit<TracedRun, 'loads'>>((resolve) => {
    const child = execFile(process.execPath, [CLI_PATH, ...args], { env, timeout: CLI_TIMEOUT_MS }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr, pid: child.pid! });
    });
  });
  const loads = new Map<number, string[]>();
  for (const line of (await readFile(trace, 'utf8').catch(() => '')).split('\n')) {
    const space = line.indexOf(' ');
    if (space < 0) continue;
    const pid = Number(line.slice(0, space));
    loads.set(pid, [...(loads.get(pid) ?? []), line.slice(space + 1)]);
  }
  return { ...result, loads };
}

function heavyLoaded(urls: string[]): string[] {
  return HEAVY_MODULES.filter(([, re]) => urls.some((u) => re.test(u))).map(([name]) => name);
}

test('the defaults shown by --help equal those of the modules that use them', () => {
  const sources: Record<keyof typeof defaults, unknown> = {
    DEFAULT_HOSTS_DIR: hosts.DEFAULT_HOSTS_DIR,
    DEFAULT_CACHE_DIR: cacheDisk.DEFAULT_CACHE_DIR,
    DEFAULT_DISK_CACHE_MAX_BYTES: cacheDisk.DEFAULT_DISK_CACHE_MAX_BYTES,
    DEFAULT_MEMORY_CACHE_BYTES: cacheMemory.DEFAULT_MEMORY_CACHE_BYTES,
    DEFAULT_BACKGROUND_BYTES_PER_SECOND: background.DEFAULT_BACKGROUND_BYTES_PER_SECOND,
    DEFAULT_MAX_GAP_BYTES: reader.DEFAULT_MAX_GAP_BYTES,
    DEFAULT_READ_DEADLINE_MS: reader.DEFAULT_READ_DEADLINE_MS,
    DEFAULT_MOUNT_TIMEOUT_MS: mountServer.DEFAULT_MOUNT_TIMEOUT_MS,
    DEFAULT_STATE_DIR: mountState.DEFAULT_STATE_DIR,
    DEFAULT_SNAPSHOTTER_ROOT: snapshotter.DEFAULT_SNAPSHOTTER_ROOT,
    FUSE_MANAGER_COMMAND: fusemanager.FUSE_MANAGER_COMMAND,
    DEFAULT_NAMESPACE: containerd.DEFAULT_NAMESPACE,
    DEFAULT_SNAPSHOTTER: containerd.DEFAULT_SNAPSHOTTER,
    DEFAULT_CHUNK_SIZE: chunktable.DEFAULT_CHUNK_SIZE,
    DEFAULT_VERITY_BLOCK_SIZE: dmverity.DEFAULT_VERITY_BLOCK_SIZE,
    DOCKER_HUB_REGISTRY: reference.DOCKER_HUB_REGISTRY,
  };
  // Every copy is checked: a new one needs its source above.
  assert.deepEqual(Object.keys(defaults).sort(), Object.keys(sources).sort());
  for (const [name, value] of Object.entries(sources)) {
    assert.equal(defaults[name as keyof typeof defaults], value, `src/cli/defaults.ts ${name} differs from its source: update the copy`);
  }
});

for (const args of [['--version'], ['--help'], ['mount', '--help'], ['umount', '--help'], ['stats', '--help']]) {
  test(`${args.join(' ')} loads the parser and the command definitions only`, async (t) => {
    const run = await tracedCli(t, args);
    assert.equal(run.code, 0, run.stderr);
    assert.equal(run.stderr, '');
    assert.notEqual(run.stdout, '');
    assert.deepEqual([...run.loads.keys()], [run.pid], 'one process, traced');
    const urls = run.loads.get(run.pid)!;
    // The trace works: the CLI's own modules and the parser are in it.
    assert.ok(urls.some((u) => u.endsWith('/dist/src/cli/main.js')), 'main.js traced');
    assert.ok(urls.some((u) => u.includes('/node_modules/yargs/')), 'yargs traced');
    assert.deepEqual(heavyLoaded(urls), []);
    assert.deepEqual(urls.filter((u) => /\/dist\/src\/cli\/[a-z]+cmd\.js$/.test(u)), [], 'no command module');
  });
}

test('serve --help shows its options without loading gRPC or the snapshotter', async (t) => {
  const run = await tracedCli(t, ['serve', '--help']);
  assert.equal(run.code, 0, run.stderr);
  for (const option of ['--address', '--root', '--fuse-manager', '--metrics-address', '--no-prefetch']) {
    assert.ok(run.stdout.includes(option), `serve --help names ${option}`);
  }
  assert.match(run.stdout, /\[default: "\/var\/lib\/erofs-lazy\/snapshotter"\]/);
  assert.deepEqual(heavyLoaded(run.loads.get(run.pid) ?? []), []);
});

test('a command loads its own module when it runs, and fails with one line', async (t) => {
  const dir = await tempDir(t, 'erofs-lazy-cli-startup-');
  const run = await tracedCli(t, ['inspect', `oci:${join(dir, 'missing')}`]);
  assert.equal(run.code, 1);
  assert.equal(run.stdout, '');
  assert.match(run.stderr, /^erofs-lazy: oci:\S+missing: not an OCI image layout[^\n]*\n$/);
  const urls = run.loads.get(run.pid)!;
  assert.ok(urls.some((u) => u.endsWith('/dist/src/cli/inspectcmd.js')), 'inspectcmd.js loaded');
  // Opening images pulls in the registry client, but inspect has no use for gRPC or the snapshotter.
  assert.deepEqual(heavyLoaded(urls).filter((n) => n !== 'undici' && n !== 'the registry client'), []);
});

test('usage errors keep their one line and exit code 2', async (t) => {
  const run = await tracedCli(t, ['mount', 'only-a-reference']);
  assert.equal(run.code, 2);
  assert.equal(run.stderr, 'erofs-lazy: Not enough non-option arguments: got 1, need at least 2\n');
  assert.deepEqual(heavyLoaded(run.loads.get(run.pid)!), []);
});

// `erofs-lazy mount` split in two processes that each load what they need: the command parses and checks the
// options and starts the serving process without loading the mount server; the serving process gets the
// parsed options from its parent and mounts without loading the argument parser, under the same command line
// as before (`... mount REF MNT ... --foreground --ready-fd 3`), with the same log and readiness protocol.
// A real mount of the sample image (converted, in an OCI layout), and a failing one whose error comes back
// from the serving process. Modules are traced as in test/unit/cli-startup.test.ts (a loader hook passed
// through NODE_OPTIONS, which the serving process inherits). The serving process is started before the
// command parses its arguments (early start) and gets the options through a pipe; a command that stops at
// its arguments (usage error, --help) leaves no such process behind.
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import type { TestContext } from 'node:test';
import { CLI_PATH, runCli } from '../helpers/cli.js';
import { assertNothingLeft, killMountProcess, recordedPids } from '../helpers/mountcli.js';
import { tempDir } from '../helpers/tmp.js';

const CLI_TIMEOUT_MS = 120_000;

interface TracedRun {
  code: number;
  stdout: string;
  stderr: string;
  pid: number;
  /** Loaded module URLs by process id. */
  loads: Map<number, string[]>;
}

async function tracedCli(dir: string, args: string[]): Promise<TracedRun> {
  const hooks = join(dir, 'hooks.mjs');
  const register = join(dir, 'register.mjs');
  const trace = join(dir, 'trace.log');
  await writeFile(
    hooks,
    "import { appendFileSync } from 'node:fs';\n" +
      'export async function load(url, context, next) {\n' +
      '  appendFileSync(process.env.CLI_STARTUP_TRACE, `${process.pid} ${url}\\n`);\n' +
      '  return next(url, context);\n' +
      '}\n',
  );
  await writeFile(register, `import { register } from 'node:module';\nregister(${JSON.stringify(`file://${hooks}`)});\n`);
  const env = { ...process.env, CLI_STARTUP_TRACE: trace, NODE_OPTIONS: `--import "${register}"` };
  const result = await new Promise<Omit<TracedRun, 'loads'>>((resolve) => {
    const child = execFile(process.execPath, [CLI_PATH, ...args], { env, timeout: CLI_TIMEOUT_MS }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr, pid: child.pid! });
    });
  });
  const loads = new Map<number, string[]>();
  for (const line of (await readFile(trace, 'utf8').catch(() => '')).split('\n')) {
    const [pid, url] = line.split(' ', 2);
    if (pid && url) loads.set(Number(pid), [...(loads.get(Number(pid)) ?? []), url]);
  }
  return { ...result, loads };
}

const loaded = (urls: string[] | undefined, re: RegExp): boolean => (urls ?? []).some((u) => re.test(u));
const MOUNT_SERVER = /\/dist\/src\/mount\/server\.js$/;
const YARGS = /\/node_modules\/yargs\//;
const CLI_MAIN = /\/dist\/src\/cli\/main\.js$/;
const GRPC = /\/node_modules\/@grpc\//;

/** A temp dir for one mount, unmounted (and its serving process killed) after the test even if it fails. */
async function mountDir(t: TestContext): Promise<{ base: string; stateDir: string; mountpoint: string; cacheDir: string }> {
  let stateDir = '';
  const base = await tempDir(t, 'erofs-lazy-cli-startup-', async () => {
    const pids = await recordedPids(stateDir);
    await runCli(['umount', '--all', '--state-dir', stateDir]);
    for (const pid of pids) await killMountProcess(pid, stateDir);
  });
  stateDir = join(base, 'state');
  return { base, stateDir, mountpoint: join(base, 'mnt'), cacheDir: join(base, 'cache') };
}

describe('erofs-lazy mount start-up', () => {
  test('the command and its serving process each load only their part, and the mount works', async (t) => {
    const images = await tempDir(t, 'erofs-lazy-cli-startup-img-');
    const src = `oci:${join(images, 'layout')}:src`;
    const seekable = `oci:${join(images, 'layout')}:seekable`;
    const sample = await runCli(['sample', src]);
    assert.equal(sample.code, 0, sample.stderr);
    const converted = await runCli(['convert', src, seekable]);
    assert.equal(converted.code, 0, converted.stderr);

    const d = await mountDir(t);
    const run = await tracedCli(d.base, ['mount', seekable, d.mountpoint, '--state-dir', d.stateDir, '--cache-dir', d.cacheDir]);
    assert.equal(run.code, 0, run.stderr);
    const match = /^mounted \S+ at (\S+) \(pid (\d+), log (\S+)\)\n$/.exec(run.stdout);
    assert.ok(match, `mount output: ${run.stdout}`);
    assert.equal(match[1], d.mountpoint);
    const servingPid = Number(match[2]);
    assert.deepEqual([...run.loads.keys()].sort(), [run.pid, servingPid].sort(), 'the command and its serving process, both traced');

    const command = run.loads.get(run.pid);
    assert.ok(loaded(command, CLI_MAIN) && loaded(command, YARGS), 'the command parses its arguments');
    assert.ok(!loaded(command, MOUNT_SERVER), 'the command does not load the mount server');
    assert.ok(!loaded(command, /\/node_modules\/undici\//), 'the command does not load the registry client');
    const serving = run.loads.get(servingPid);
    assert.ok(loaded(serving, MOUNT_SERVER), 'the serving process loads the mount server');
    assert.ok(!loaded(serving, YARGS) && !loaded(serving, CLI_MAIN), 'the serving process does not parse arguments again');
    assert.ok(!loaded(serving, GRPC), 'the serving process does not load gRPC');

    // Same command line as before, so ps shows what is served and test helpers find the process.
    const cmdline = (await readFile(`/proc/${servingPid}/cmdline`, 'utf8')).split('\0');
    assert.deepEqual(cmdline.slice(1, 6), ['--single-threaded-gc', CLI_PATH, 'mount', seekable, d.mountpoint]);
    const environ = (await readFile(`/proc/${servingPid}/environ`, 'utf8')).split('\0');
    assert.ok(environ.includes(`MALLOC_ARENA_MAX=${process.env.MALLOC_ARENA_MAX ?? '1'}`), 'one malloc arena unless the environment says otherwise');
    assert.deepEqual(cmdline.slice(-4, -1), ['--foreground', '--ready-fd', '3']);
    const log = await readFile(match[3]!, 'utf8');
    assert.match(log, new RegExp(`^\\S+ mounted ${seekable.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} at ${d.mountpoint}$`, 'm'));

    // The mount serves the image.
    const motd = await readFile(join(d.mountpoint, 'etc/motd'), 'utf8');
    const viaCat = await runCli(['cat', seekable, '/etc/motd']);
    assert.equal(viaCat.code, 0, viaCat.stderr);
    assert.equal(motd, viaCat.stdout);
    assert.ok((await readdir(join(d.mountpoint, 'bin'))).length > 0);
    const stats = await runCli(['stats', d.mountpoint, '--state-dir', d.stateDir, '--json']);
    assert.equal(stats.code, 0, stats.stderr);
    assert.equal((JSON.parse(stats.stdout) as { pid: number }).pid, servingPid);

    const umount = await runCli(['umount', d.mountpoint, '--state-dir', d.stateDir]);
    assert.equal(umount.code, 0, umount.stderr);
    const finalLog = await readFile(match[3]!, 'utf8');
    assert.match(finalLog, new RegExp(`^\\S+ SIGTERM: unmounting ${d.mountpoint}$`, 'm'));
    assert.match(finalLog, new RegExp(`^\\S+ unmounted ${d.mountpoint}$`, 'm'));
    await assertNothingLeft([d.base]);
  });

  test('an error of the serving process comes back as the command\'s one line', async (t) => {
    const d = await mountDir(t);
    const missing = `oci:${join(d.base, 'no-layout')}`;
    const run = await tracedCli(d.base, ['mount', missing, d.mountpoint, '--state-dir', d.stateDir, '--cache-dir', d.cacheDir]);
    assert.equal(run.code, 1);
    assert.equal(run.stdout, '');
    assert.match(run.stderr, /^erofs-lazy: oci:\S+no-layout: not an OCI image layout[^\n]*\n$/);
    const others = [...run.loads.keys()].filter((p) => p !== run.pid);
    assert.equal(others.length, 1, 'one serving process was started');
    assert.ok(loaded(run.loads.get(others[0]!), MOUNT_SERVER), 'the error came from the serving process');
    assert.ok(!loaded(run.loads.get(others[0]!), YARGS));
    await assertNothingLeft([d.base]);
  });

  test('a mount that stops at its arguments (usage error, --help) leaves no early-started process', async (t) => {
    const d = await mountDir(t);
    const marker = `oci:${join(d.base, 'marker-layout')}`;
    const usage = await tracedCli(d.base, ['mount', marker, d.mountpoint, '--state-dir', d.stateDir, '--no-such-option']);
    assert.equal(usage.code, 2, usage.stderr);
    assert.match(usage.stderr, /^erofs-lazy: Unknown arguments?: [^\n]*such-option[^\n]*\n$/);
    const help = await runCli(['mount', marker, d.mountpoint, '--help']);
    assert.equal(help.code, 0, help.stderr);
    assert.match(help.stdout, /--record-exact/);
    // The early-started child is killed when the command stops; give the kernel a moment to reap it.
    const until = Date.now() + 5000;
    for (;;) {
      const { stdout } = await new Promise<{ stdout: string }>((res, rej) => execFile('ps', ['-eo', 'pid,stat,args'], (err, stdout) => (err ? rej(err) : res({ stdout }))));
      const left = stdout.split('\n').filter((l) => l.includes(marker) && !/^\s*\d+\s+Z/.test(l));
      if (left.length === 0) break;
      if (Date.now() > until) assert.fail(`processes left: ${left.join(' | ')}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    await assertNothingLeft([d.base]);
  });

  test('an early-started serving process whose parent goes away before the handover exits without mounting', async (t) => {
    const d = await mountDir(t);
    const child = spawn(process.execPath, [CLI_PATH, 'mount', `oci:${join(d.base, 'none')}`, d.mountpoint, '--state-dir', d.stateDir, '--foreground', '--ready-fd', '3'], {
      stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'],
      env: { ...process.env, EROFS_LAZY_EARLY_START: '1' },
    });
    t.after(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let stderr = '';
    child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
    (child.stdio[4] as NodeJS.WritableStream).end(); // the parent stops without handing anything over
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    assert.equal(code, 0, stderr);
    assert.equal(stderr, '');
    await assertNothingLeft([d.base]);
  });

  test('an early-started serving process refuses a malformed handover with a one-line reason to its parent', async (t) => {
    const d = await mountDir(t);
    const child = spawn(process.execPath, [CLI_PATH, 'mount', `oci:${join(d.base, 'none')}`, d.mountpoint, '--state-dir', d.stateDir, '--foreground', '--ready-fd', '3'], {
      stdio: ['ignore', 'ignore', 'ignore', 'pipe', 'pipe'],
      env: { ...process.env, EROFS_LAZY_EARLY_START: '1' },
    });
    t.after(() => {
      if (child.exitCode === null) child.kill('SIGKILL');
    });
    let ready = '';
    (child.stdio[3] as NodeJS.ReadableStream).on('data', (b: Buffer) => (ready += b.toString()));
    (child.stdio[4] as NodeJS.WritableStream).end('{"logPath": 5}');
    const code = await new Promise<number | null>((res) => child.on('exit', (c) => res(c)));
    assert.notEqual(code, 0);
    const message = JSON.parse(ready.trim()) as { error?: string };
    assert.match(message.error ?? '', /^unreadable handover from the mount command/);
    await assertNothingLeft([d.base]);
  });
});

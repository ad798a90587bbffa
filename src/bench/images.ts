// Benchmark images for `erofs-lazy bench`, built offline from Debian's mirror and the npm registry and
// cached under the bench work dir (root file systems, node_modules, registry storage, raw EROFS images),
// so that a second run rebuilds nothing: Debian bookworm minbase + python3 (debootstrap), a Node.js
// application (minbase, the host's node binary, an npm-installed node_modules), and one large
// pseudo-random file. Each is pushed to the local registry as a plain OCI image (tar+gzip layers) and
// converted to seekable EROFS; the seekable layers are also decoded to raw EROFS images on local disk
// for the loop-mount baseline.
import { execFile } from 'node:child_process';
import { createCipheriv, createHash } from 'node:crypto';
import { createWriteStream, existsSync } from 'node:fs';
import { chmod, copyFile, mkdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { promisify } from 'node:util';
import { decodeLayerBlob } from '../chunktable/index.js';
import { convertImage } from '../convert/image.js';
import { openImageStore } from '../fetch/index.js';
import type { Descriptor } from '../oci/types.js';
import { buildImageFromDirs } from '../sample/build.js';

const run = promisify(execFile);

/** Bump when a recipe changes, so that cached trees and tags from an older recipe are not reused. */
export const IMAGE_RECIPE_VERSION = 1;
export const DEBIAN_SUITE = 'bookworm';
export const DEBIAN_MIRROR = 'http://deb.debian.org/debian';
/** npm packages of the Node.js application image: a typical server/tooling mix with a large node_modules. */
export const NODE_APP_PACKAGES = ['express', 'lodash', 'typescript', 'rxjs', 'moment', '@babel/core', 'webpack', 'eslint', 'aws-sdk', 'prettier'];
/** Modules the Node.js workload requires. */
export const NODE_APP_REQUIRES = ['express', 'lodash', 'typescript', 'rxjs', 'moment', '@babel/core', 'webpack'];
export const HOST_NODE_BINARY = '/usr/bin/node';
const NODE_IN_IMAGE = '/usr/local/bin/node';
const CHROOT_PATH = '/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin';
const APT_TIMEOUT_MS = 15 * 60_000;
const MIB = 1024 * 1024;
/** Path of the large file inside its image. */
export const BIG_FILE_IN_IMAGE = 'data/big.bin';
/** Piece size when writing the large file. */
const BIG_FILE_PIECE = 16 * MIB;

/** What the benchmark knows about one pushed image (refs are repository paths, without a registry host). */
export interface BuiltImage {
  name: string;
  description: string;
  plainRef: string;
  seekableRef: string;
  plainLayers: Descriptor[];
  seekableLayers: Descriptor[];
  /** Sums of the layer blob sizes. */
  plainBytes: number;
  seekableBytes: number;
  /** Raw EROFS images decoded from the seekable layers, bottom first, on local disk. */
  rawPaths: string[];
  rawBytes: number;
  /** Uncompressed size of the layer trees (tar input). */
  treeBytes: number;
  chunkSize: number | 'default';
  /** How the seekable layers were laid out: by mkfs.erofs, or by erofs-lazy's writer with a workload's start-up paths first. */
  layout?: BenchLayout;
  /** Start-up layout: how many hot paths the converter was given. */
  hotPaths?: number;
}

/** Bumped when the start-up conversion changes (images cached under the old tag are rebuilt): 2 = landmark annotation, 3 = start-up chunks at zstd level 19. */
const STARTUP_LAYOUT_VERSION = 3;

/** Image layouts the bench can convert to. */
export const BENCH_LAYOUTS = ['mkfs', 'startup'] as const;
export type BenchLayout = (typeof BENCH_LAYOUTS)[number];

export interface ImageBuildContext {
  /** Bench work dir (cache root). */
  work: string;
  /** host:port of the local registry (direct). */
  registry: string;
  chunkSize?: number;
  /** Start-up layout: the paths the workload read (from `profile paths`), laid out first by the converter. */
  hotPaths?: string[];
  log: (line: string) => void;
}

/** Runs a command, streaming nothing; throws with the tail of its stderr. */
async function sh(cmd: string, args: string[], timeoutMs = APT_TIMEOUT_MS): Promise<string> {
  try {
    return (await run(cmd, args, { maxBuffer: 64 * MIB, timeout: timeoutMs })).stdout;
  } catch (err) {
    const e = err as Error & { stderr?: string };
    throw new Error(`${cmd} ${args.slice(0, 3).join(' ')}... failed: ${(e.stderr ?? e.message).trim().split('\n').slice(-3).join(' | ')}`);
  }
}

/** Installs a Debian package when `probe` is missing (apt-get update only when the first try fails). */
export async function ensureDebianPackage(pkg: string, probe: string, log: (line: string) => void): Promise<void> {
  if (existsSync(probe)) return;
  log(`installing ${pkg} with apt-get`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => promisify(execFile)('apt-get', ['install', '-y', '--no-install-recommends', pkg], { env, timeout: APT_TIMEOUT_MS, maxBuffer: 64 * MIB });
  try {
    await install();
  } catch {
    await promisify(execFile)('apt-get', ['update', '-qq'], { env, timeout: APT_TIMEOUT_MS, maxBuffer: 64 * MIB });
    await install();
  }
  if (!existsSync(probe)) throw new Error(`apt-get installed ${pkg} but ${probe} is still missing`);
}

/** Runs `build(tmp)` into `${dir}.tmp` and renames it to `dir` when done; skips when `dir` exists. */
async function cachedDir(dir: string, what: string, log: (line: string) => void, build: (tmp: string) => Promise<void>): Promise<string> {
  if (existsSync(dir)) return dir;
  const tmp = `${dir}.tmp`;
  await rm(tmp, { recursive: true, force: true });
  await mkdir(dirname(dir), { recursive: true });
  log(`building ${what} (cached in ${dir})`);
  const started = Date.now();
  await build(tmp);
  await rename(tmp, dir);
  log(`built ${what} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  return dir;
}

/** Debian bookworm minbase, without apt lists and package archives. */
export async function debianMinbase(ctx: ImageBuildContext): Promise<string> {
  await ensureDebianPackage('debootstrap', '/usr/sbin/debootstrap', ctx.log);
  return cachedDir(join(ctx.work, 'trees', `debian-minbase-v${IMAGE_RECIPE_VERSION}`), 'Debian minbase (debootstrap)', ctx.log, async (tmp) => {
    await sh('debootstrap', ['--variant=minbase', DEBIAN_SUITE, tmp, DEBIAN_MIRROR]);
    await cleanApt(tmp);
  });
}

async function cleanApt(root: string): Promise<void> {
  await sh('sh', ['-c', `rm -rf "${root}"/var/lib/apt/lists/* "${root}"/var/cache/apt/*.bin "${root}"/var/cache/apt/archives/*.deb "${root}"/var/log/*.log`]);
}

/** Minbase plus python3 installed with apt inside a chroot. */
export async function debianPython(ctx: ImageBuildContext): Promise<string> {
  const base = await debianMinbase(ctx);
  return cachedDir(join(ctx.work, 'trees', `debian-python-v${IMAGE_RECIPE_VERSION}`), 'Debian minbase + python3', ctx.log, async (tmp) => {
    await sh('cp', ['-a', base, tmp]);
    await copyFile('/etc/resolv.conf', join(tmp, 'etc/resolv.conf'));
    await sh('chroot', [tmp, '/usr/bin/env', '-i', `PATH=${CHROOT_PATH}`, 'DEBIAN_FRONTEND=noninteractive', 'sh', '-c',
      'apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 >/dev/null && apt-get clean']);
    await writeFile(join(tmp, 'etc/resolv.conf'), '');
    await cleanApt(tmp);
  });
}

/** A layer holding the host's node binary (and any library it needs that minbase lacks). */
export async function nodeRuntimeLayer(ctx: ImageBuildContext): Promise<string> {
  const base = await debianMinbase(ctx);
  return cachedDir(join(ctx.work, 'trees', `node-runtime-v${IMAGE_RECIPE_VERSION}`), 'Node.js runtime layer', ctx.log, async (tmp) => {
    const target = join(tmp, NODE_IN_IMAGE);
    await mkdir(dirname(target), { recursive: true });
    await copyFile(HOST_NODE_BINARY, target);
    await chmod(target, 0o755);
    const ldd = await sh('ldd', [HOST_NODE_BINARY]);
    for (const m of ldd.matchAll(/=>\s+(\/\S+)/g)) {
      const lib = m[1]!;
      if (existsSync(join(base, lib)) || existsSync(join(base, lib.replace(/^\/lib\//, '/usr/lib/')))) continue;
      await mkdir(join(tmp, dirname(lib)), { recursive: true });
      await copyFile(lib, join(tmp, lib));
    }
  });
}

/** A layer with /app/package.json and /app/node_modules installed from the npm registry. */
export async function nodeAppLayer(ctx: ImageBuildContext): Promise<string> {
  return cachedDir(join(ctx.work, 'trees', `node-app-v${IMAGE_RECIPE_VERSION}`), `node_modules (${NODE_APP_PACKAGES.join(', ')})`, ctx.log, async (tmp) => {
    const app = join(tmp, 'app');
    await mkdir(app, { recursive: true });
    await writeFile(join(app, 'package.json'), `${JSON.stringify({ name: 'bench-app', version: '1.0.0', private: true }, null, 2)}\n`);
    await sh('npm', ['install', '--no-audit', '--no-fund', '--omit=dev', '--loglevel=error', '--prefix', app, ...NODE_APP_PACKAGES]);
  });
}

/** Deterministic incompressible bytes: AES-128-CTR keystream of a fixed key (fast, unlike a hash counter). */
export function keystream(seed: string): (length: number) => Buffer {
  const key = createHash('sha256').update(seed).digest();
  const cipher = createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
  return (length) => cipher.update(Buffer.alloc(length));
}

/** A layer with one pseudo-random file of `mib` MiB at /data/big.bin. */
export async function bigFileLayer(ctx: ImageBuildContext, mib: number): Promise<string> {
  return cachedDir(join(ctx.work, 'trees', `bigfile-${mib}m-v${IMAGE_RECIPE_VERSION}`), `a ${mib} MiB pseudo-random file`, ctx.log, async (tmp) => {
    await mkdir(join(tmp, 'data'), { recursive: true });
    const out = createWriteStream(join(tmp, BIG_FILE_IN_IMAGE));
    const next = keystream(`erofs-lazy-bench-${mib}`);
    for (let off = 0; off < mib * MIB; off += BIG_FILE_PIECE) {
      if (!out.write(next(Math.min(BIG_FILE_PIECE, mib * MIB - off)))) await new Promise<void>((r) => out.once('drain', () => r()));
    }
    await new Promise<void>((r, j) => out.end((e?: Error | null) => (e ? j(e) : r())));
  });
}

/** Recipe of one benchmark image. */
export interface ImageRecipe {
  name: string;
  description: string;
  /** Layer directories, bottom first (built or taken from the cache). */
  layers: (ctx: ImageBuildContext) => Promise<string[]>;
  cmd: string[];
}

export function debianPythonRecipe(): ImageRecipe {
  return {
    name: 'debian-python',
    description: `Debian ${DEBIAN_SUITE} minbase + python3 (debootstrap), one layer`,
    layers: async (ctx) => [await debianPython(ctx)],
    cmd: ['python3'],
  };
}

export function nodeAppRecipe(): ImageRecipe {
  return {
    name: 'node-app',
    description: `Debian ${DEBIAN_SUITE} minbase + node ${process.version} binary + node_modules (${NODE_APP_PACKAGES.join(', ')}), three layers`,
    layers: async (ctx) => [await debianMinbase(ctx), await nodeRuntimeLayer(ctx), await nodeAppLayer(ctx)],
    cmd: ['node'],
  };
}

export function bigFileRecipe(mib: number): ImageRecipe {
  return {
    name: `bigfile-${mib}m`,
    description: `one ${mib} MiB pseudo-random (incompressible) file, one layer`,
    layers: async (ctx) => [await bigFileLayer(ctx, mib)],
    cmd: ['/data/big.bin'],
  };
}

async function treeBytes(dirs: string[]): Promise<number> {
  let total = 0;
  for (const d of dirs) total += Number((await sh('du', ['-sb', '--apparent-size', d])).split('\t')[0]);
  return total;
}

async function manifestExists(ref: string): Promise<boolean> {
  const store = openImageStore(ref, { credentials: 'none' });
  try {
    await store.resolve();
    return true;
  } catch {
    return false;
  } finally {
    await store.close();
  }
}

/**
 * Builds (or finds in the cache) the image of a recipe: pushes the plain image, converts it, decodes the
 * seekable layers to raw EROFS images. The record is kept in WORK/images/NAME.json and reused while the
 * registry still has both manifests and the raw images exist.
 */
export async function ensureImage(ctx: ImageBuildContext, recipe: ImageRecipe): Promise<BuiltImage> {
  const layout: BenchLayout = ctx.hotPaths ? 'startup' : 'mkfs';
  const chunkTag = `${ctx.chunkSize ? `c${ctx.chunkSize}` : 'cdefault'}${layout === 'mkfs' ? '' : `-${layout}${STARTUP_LAYOUT_VERSION}`}`;
  const repo = `bench/${recipe.name}`;
  const plainRef = `${repo}:plain-v${IMAGE_RECIPE_VERSION}`;
  const seekableRef = `${repo}:seekable-v${IMAGE_RECIPE_VERSION}-${chunkTag}`;
  const recordPath = join(ctx.work, 'images', `${recipe.name}-${chunkTag}.json`);
  if (existsSync(recordPath)) {
    const record = JSON.parse(await readFile(recordPath, 'utf8')) as BuiltImage;
    const fresh =
      record.plainRef === plainRef &&
      record.seekableRef === seekableRef &&
      record.rawPaths.every((p) => existsSync(p)) &&
      (await manifestExists(`${ctx.registry}/${plainRef}`)) &&
      (await manifestExists(`${ctx.registry}/${seekableRef}`));
    if (fresh) return record;
  }
  const dirs = await recipe.layers(ctx);
  const scratch = join(ctx.work, 'scratch');
  await mkdir(scratch, { recursive: true });
  const plain = openImageStore(`${ctx.registry}/${plainRef}`, { credentials: 'none' });
  const seekable = openImageStore(`${ctx.registry}/${seekableRef}`, { credentials: 'none' });
  try {
    if (!(await manifestExists(`${ctx.registry}/${plainRef}`))) {
      ctx.log(`${recipe.name}: packing and pushing the plain image (tar+gzip)`);
      await buildImageFromDirs(plain, dirs, { cmd: recipe.cmd, workDir: scratch });
    }
    if (!(await manifestExists(`${ctx.registry}/${seekableRef}`))) {
      ctx.log(`${recipe.name}: converting to seekable EROFS`);
      await convertImage(plain, seekable, { chunkSize: ctx.chunkSize, workDir: scratch, hotPaths: ctx.hotPaths });
    }
    const plainLayers = (await plain.resolve()).manifest.layers;
    const seekableLayers = (await seekable.resolve()).manifest.layers;
    const rawPaths: string[] = [];
    await mkdir(join(ctx.work, 'raw'), { recursive: true });
    for (const layer of seekableLayers) {
      const path = join(ctx.work, 'raw', `${layer.digest.replace(':', '-')}.erofs`);
      if (!existsSync(path)) {
        await decodeLayerBlob(await seekable.openBlob(layer), `${path}.tmp`, layer);
        await rename(`${path}.tmp`, path);
      }
      rawPaths.push(path);
    }
    let rawBytes = 0;
    for (const p of rawPaths) rawBytes += (await stat(p)).size;
    const record: BuiltImage = {
      name: recipe.name,
      description: recipe.description,
      plainRef,
      seekableRef,
      plainLayers,
      seekableLayers,
      plainBytes: plainLayers.reduce((s, l) => s + l.size, 0),
      seekableBytes: seekableLayers.reduce((s, l) => s + l.size, 0),
      rawPaths,
      rawBytes,
      treeBytes: await treeBytes(dirs),
      chunkSize: ctx.chunkSize ?? 'default',
      layout,
      ...(ctx.hotPaths ? { hotPaths: ctx.hotPaths.length } : {}),
    };
    await mkdir(dirname(recordPath), { recursive: true });
    await writeFile(recordPath, `${JSON.stringify(record, null, 2)}\n`);
    return record;
  } finally {
    await plain.close();
    await seekable.close();
    await rm(scratch, { recursive: true, force: true });
  }
}

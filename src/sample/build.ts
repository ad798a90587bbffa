// Builds ordinary OCI images (tar+gzip layers made by GNU tar) from directories, and the embedded
// sample image that the demo and the tests convert and mount. Layer dirs use OCI whiteout names
// (`.wh.NAME`, `.wh..wh..opq`) exactly as a Docker-built image would.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, openSync } from 'node:fs';
import { chmod, copyFile, lutimes, mkdir, mkdtemp, readdir, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ImageStore } from '../oci/store.js';
import { MEDIA_TYPE } from '../oci/types.js';
import type { Descriptor, ImageConfig, ImageManifest, Platform } from '../oci/types.js';
import { sha256Digest, sha256FileDigest } from '../util/digest.js';

/** GNU tar arguments for a layer: pax format (xattrs, long names, sub-second mtimes), numeric owners, sorted. */
const TAR_ARGS = ['--xattrs', '--xattrs-include=*', '--numeric-owner', '--format=pax', '--sort=name', '-c', '-f', '-'];

/** Runs a command to completion; with `stdoutPath`, its standard output goes straight into that file. */
async function run(cmd: string, args: string[], stdoutPath?: string): Promise<void> {
  const out = stdoutPath ? openSync(stdoutPath, 'w') : 'ignore';
  try {
    await new Promise<void>((resolve, reject) => {
      const child = spawn(cmd, args, { stdio: ['ignore', out, 'pipe'] });
      let stderr = '';
      child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('error', reject);
      child.on('close', (code) =>
        code === 0 ? resolve() : reject(new Error(`${cmd} exited ${code}: ${stderr.trim().split('\n').pop() ?? ''}`)),
      );
    });
  } finally {
    if (typeof out === 'number') closeSync(out);
  }
}

export interface BuildImageOptions {
  platform?: Platform;
  /** Container command written into the config. */
  cmd?: string[];
  /** Scratch directory for the layer tarballs. */
  workDir?: string;
}

/** Packs each directory (bottom layer first) as a tar+gzip layer and pushes config and manifest. */
export async function buildImageFromDirs(store: ImageStore, layerDirs: string[], options: BuildImageOptions = {}): Promise<Descriptor> {
  const work = await mkdtemp(join(options.workDir ?? tmpdir(), 'erofs-lazy-build-'));
  try {
    const layers: Descriptor[] = [];
    const diffIds: string[] = [];
    for (const [i, dir] of layerDirs.entries()) {
      const tarPath = join(work, `layer-${i}.tar`);
      await run('tar', [...TAR_ARGS, '-C', dir, '.'], tarPath);
      const gzPath = `${tarPath}.gz`;
      await run('gzip', ['-n', '-6', '-c', tarPath], gzPath);
      diffIds.push(await sha256FileDigest(tarPath));
      const desc: Descriptor = {
        mediaType: MEDIA_TYPE.ociLayerTarGzip,
        digest: await sha256FileDigest(gzPath),
        size: (await stat(gzPath)).size,
      };
      await store.pushBlob(desc, { path: gzPath });
      layers.push(desc);
    }
    const platform = options.platform ?? { os: 'linux', architecture: 'amd64' };
    const config: ImageConfig = {
      architecture: platform.architecture,
      os: platform.os,
      ...(platform.variant ? { variant: platform.variant } : {}),
      config: { Env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'], Cmd: options.cmd ?? ['/bin/sh'] },
      rootfs: { type: 'layers', diff_ids: diffIds },
      history: layerDirs.map((_, i) => ({ created_by: `erofs-lazy sample layer ${i}` })),
    };
    const configBytes = Buffer.from(JSON.stringify(config));
    const configDesc: Descriptor = { mediaType: MEDIA_TYPE.ociConfig, digest: sha256Digest(configBytes), size: configBytes.length };
    await store.pushBlob(configDesc, { bytes: configBytes });
    const manifest: ImageManifest = { schemaVersion: 2, mediaType: MEDIA_TYPE.ociManifest, config: configDesc, layers };
    return store.pushManifest(MEDIA_TYPE.ociManifest, Buffer.from(JSON.stringify(manifest)));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

/** Busybox applets linked in the sample image's /bin. */
const SAMPLE_APPLETS = ['sh', 'ls', 'cat', 'echo', 'sha256sum', 'wc', 'head', 'du', 'find', 'grep', 'uname', 'true'];
/** Size of the sample's large data file, so that a small read visibly fetches a small fraction. */
export const SAMPLE_BIG_FILE_SIZE = 48 * 1024 * 1024;
const SAMPLE_MTIME = new Date('2024-01-02T03:04:05Z');
const BUSYBOX_PATH = '/bin/busybox';

/** Deterministic incompressible-looking bytes (a SHA-256 counter stream). */
export function pseudoRandomBytes(length: number, seed: string): Buffer {
  const out = Buffer.alloc(length);
  let block = 0;
  for (let off = 0; off < length; off += 32) {
    createHash('sha256').update(`${seed}:${block++}`).digest().copy(out, off);
  }
  return out;
}

/**
 * Writes the sample image's two layer directories under `dir`: a busybox-static root filesystem with a
 * large data file, and an upper layer that adds a file, deletes one (whiteout) and replaces a directory
 * (opaque). Returns the layer dirs, bottom first.
 */
export async function writeSampleLayers(dir: string): Promise<string[]> {
  const base = join(dir, 'layer0');
  const upper = join(dir, 'layer1');
  for (const d of ['bin', 'etc', 'usr/share/sample/docs', 'var/cache/old', 'tmp']) await mkdir(join(base, d), { recursive: true });
  await copyFile(BUSYBOX_PATH, join(base, 'bin/busybox'));
  await chmod(join(base, 'bin/busybox'), 0o755);
  for (const applet of SAMPLE_APPLETS) await symlink('busybox', join(base, 'bin', applet));
  await writeFile(join(base, 'etc/os-release'), 'NAME="erofs-lazy sample"\nID=sample\nVERSION_ID=1\n');
  await writeFile(join(base, 'etc/hostname'), 'sample\n');
  await writeFile(join(base, 'etc/obsolete.conf'), 'deleted by the upper layer\n');
  await writeFile(join(base, 'usr/share/sample/big.bin'), pseudoRandomBytes(SAMPLE_BIG_FILE_SIZE, 'erofs-lazy-sample'));
  await writeFile(join(base, 'usr/share/sample/docs/README'), 'The sample image of erofs-lazy.\n');
  await writeFile(join(base, 'var/cache/old/stale'), 'hidden by an opaque directory\n');
  await chmod(join(base, 'tmp'), 0o1777);

  await mkdir(join(upper, 'etc'), { recursive: true });
  await mkdir(join(upper, 'var/cache'), { recursive: true });
  await writeFile(join(upper, 'etc/motd'), 'Hello from a lazily mounted seekable EROFS image.\n');
  await writeFile(join(upper, 'etc/.wh.obsolete.conf'), '');
  await writeFile(join(upper, 'var/cache/.wh..wh..opq'), '');
  await writeFile(join(upper, 'var/cache/fresh'), 'the only file left in /var/cache\n');
  for (const root of [base, upper]) await touchTree(root, SAMPLE_MTIME);
  return [base, upper];
}

async function touchTree(root: string, when: Date): Promise<void> {
  const entries = await readdir(root, { withFileTypes: true, recursive: true });
  for (const e of entries) {
    const p = join(e.parentPath, e.name);
    if (e.isSymbolicLink()) await lutimes(p, when, when);
    else await utimes(p, when, when);
  }
  await utimes(root, when, when);
}


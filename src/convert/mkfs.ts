// Builds a raw, uncompressed EROFS image from a staging directory with mkfs.erofs (erofs-utils 1.5, which
// has no --tar), reproducibly: a fixed UUID, per-file mtimes kept, and a fixed superblock build time.
// Also runs fsck.erofs, and derives a layer's image UUID from its digest.
//
// erofs-utils 1.5 time handling, measured on this machine:
//  - `-T<t>` stamps every inode with t (mtimes lost), so it is not used.
//  - SOURCE_DATE_EPOCH=<t> fixes the build time to t and CLAMPS: an inode whose mtime (seconds) is t or
//    later gets mtime t (and the build time's zero nanoseconds). `--preserve-mtime` does not change that.
//    So the build time is the newest mtime in the tree (rounded up to a whole second), which keeps every
//    mtime exactly and is a function of the tree alone.
//  - Without SOURCE_DATE_EPOCH the build time is "now", and the image differs on every build.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { lstat, readdir, rm } from 'node:fs/promises';

export const MKFS_EROFS = 'mkfs.erofs';
export const FSCK_EROFS = 'fsck.erofs';
/** Bytes of a tool's stderr kept for error messages. */
const STDERR_TAIL_BYTES = 4000;
/** Lines of stderr quoted in an error (the last ones). */
const STDERR_TAIL_LINES = 3;
/** Domain separator hashed with the layer digest for the image UUID (the dm-verity UUID uses another). */
export const EROFS_UUID_DOMAIN = 'erofs:';
const UUID_PATTERN = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const NS_PER_SECOND = 1_000_000_000n;

export interface BuildErofsOptions {
  /** Filesystem UUID, "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" (lowercase hex). */
  uuid: string;
  /**
   * Superblock build time (SOURCE_DATE_EPOCH), whole seconds >= 0. mkfs.erofs 1.5 clamps every mtime at or
   * after it to it, so the default is the newest mtime in the tree, rounded up.
   */
  epoch?: number;
}

/** A tool (mkfs.erofs, fsck.erofs) failed; the message is one line with its exit code and stderr tail. */
export class ErofsToolError extends Error {
  override name = 'ErofsToolError';
  constructor(
    readonly tool: string,
    readonly exitCode: number,
    readonly stderrTail: string,
    context: string,
  ) {
    super(`${tool} failed (exit ${exitCode}) ${context}: ${stderrTail || 'no error output'}`);
  }
}

interface ToolResult {
  code: number;
  stdout: string;
  stderr: string;
}

function runTool(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): Promise<ToolResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...env, LC_ALL: 'C' } });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d: string) => {
      stdout = (stdout + d).slice(-STDERR_TAIL_BYTES);
    });
    child.stderr.on('data', (d: string) => {
      stderr = (stderr + d).slice(-STDERR_TAIL_BYTES);
    });
    child.on('error', (err) => reject(new Error(`cannot run ${cmd}: ${err.message}`)));
    child.on('close', (code, signal) => resolve({ code: code ?? (signal ? 128 : 1), stdout, stderr }));
  });
}

/** The last few meaningful lines of a tool's output, on one line (progress escapes removed). */
export function outputTail(text: string): string {
  return text
    .replace(/\x1b\[[0-9;]*[A-Za-z]/g, '\n') // mkfs.erofs redraws its progress line with ESC[K
    .split(/[\r\n]+/)
    .map((l) => l.trim())
    .filter((l) => l !== '')
    .slice(-STDERR_TAIL_LINES)
    .join(' | ');
}

/**
 * The image UUID for a layer: the first 16 bytes of sha256("erofs:" + digest) with the RFC 4122 version
 * (4) and variant bits set, so it is never all zero.
 */
export function erofsUuidForLayer(layerDigest: string): string {
  if (layerDigest === '') throw new Error('erofsUuidForLayer: empty layer digest');
  const b = createHash('sha256').update(`${EROFS_UUID_DOMAIN}${layerDigest}`).digest().subarray(0, 16);
  b[6] = (b[6]! & 0x0f) | 0x40;
  b[8] = (b[8]! & 0x3f) | 0x80;
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Newest mtime under `root` (root included, symlinks not followed), in whole seconds rounded up; >= 0.
 * Names are handled as bytes (they need not be UTF-8). */
export async function newestMtimeSeconds(root: string): Promise<number> {
  let newestNs = 0n;
  const slash = Buffer.from('/');
  const stack: Buffer[] = [Buffer.from(root)];
  while (stack.length > 0) {
    const dir = stack.pop()!;
    const st = await lstat(dir, { bigint: true });
    if (st.mtimeNs > newestNs) newestNs = st.mtimeNs;
    for (const entry of await readdir(dir, { withFileTypes: true, encoding: 'buffer' })) {
      const p = Buffer.concat([dir, slash, entry.name]);
      if (entry.isDirectory()) {
        stack.push(p);
      } else {
        const s = await lstat(p, { bigint: true });
        if (s.mtimeNs > newestNs) newestNs = s.mtimeNs;
      }
    }
  }
  return Number((newestNs + NS_PER_SECOND - 1n) / NS_PER_SECOND);
}

/**
 * Runs mkfs.erofs on `stagingDir`, writing `outPath` (replaced if it exists; removed again on failure).
 * Uncompressed, xattrs and owners kept, mtimes kept, UUID and build time fixed: the same tree gives the
 * same bytes.
 */
export async function buildErofsImage(stagingDir: string, outPath: string, opts: BuildErofsOptions): Promise<void> {
  if (!UUID_PATTERN.test(opts.uuid) || /^[0-]+$/.test(opts.uuid)) {
    throw new Error(`buildErofsImage: invalid UUID ${JSON.stringify(opts.uuid)} (want lowercase 8-4-4-4-12 hex, not all zero)`);
  }
  const epoch = opts.epoch ?? (await newestMtimeSeconds(stagingDir));
  if (!Number.isSafeInteger(epoch) || epoch < 0) throw new Error(`buildErofsImage: invalid epoch ${epoch}`);
  // Start from nothing, so that a failed build never leaves an older image behind under this name.
  await rm(outPath, { force: true });
  const args = ['--quiet', `-U${opts.uuid}`, '--preserve-mtime', outPath, stagingDir];
  const res = await runTool(MKFS_EROFS, args, { ...process.env, SOURCE_DATE_EPOCH: String(epoch) });
  if (res.code !== 0) {
    await rm(outPath, { force: true });
    throw new ErofsToolError(MKFS_EROFS, res.code, outputTail(`${res.stdout}\n${res.stderr}`), `building ${outPath} from ${stagingDir}`);
  }
}

export interface FsckOptions {
  /** Also unpack the image into this (new or empty) directory, checking every file's data. */
  extractTo?: string;
}

/** Runs fsck.erofs on an image; throws ErofsToolError when it finds a problem. */
export async function fsckErofsImage(imagePath: string, opts: FsckOptions = {}): Promise<void> {
  const args = opts.extractTo ? [`--extract=${opts.extractTo}`, imagePath] : [imagePath];
  const res = await runTool(FSCK_EROFS, args);
  if (res.code !== 0) {
    throw new ErofsToolError(FSCK_EROFS, res.code, outputTail(`${res.stdout}\n${res.stderr}`), `checking ${imagePath}`);
  }
}

// What `erofs-lazy ls`, `cat` and `stat` do (their options are in browse.ts): open the image's layers as
// lazy chunk sources under the user-space EROFS reader (browseimage.ts), walk or read the tree, and print
// entries, file bytes or stat reports (browseformat.ts); `--stats` prints what was fetched.
import { displayName, ErofsPathError } from '../erofs/index.js';
import type { LayeredView, ViewNode } from '../erofs/index.js';
import { BrowseSession } from './browseimage.js';
import type { BrowseOpenOptions, BrowseStats } from './browseimage.js';
import { entryJson, longLine, statJson, statText } from './browseformat.js';
import type { EntryJson } from './browseformat.js';
import type { ImageAccessArgs } from './common.js';
import { formatBytes, shortDigest } from './output.js';

/** Extents `stat` lists at most (the chunk list still covers the whole file). */
export const STAT_MAX_EXTENTS = 64;

export interface BrowseArgs extends ImageAccessArgs {
  reference: string;
  layer?: string;
  stats: boolean;
  'cache-dir'?: string;
}

function printStats(s: BrowseStats, json: boolean): void {
  if (json) {
    process.stderr.write(`${JSON.stringify({ stats: s })}\n`);
    return;
  }
  const pct = (s.fractionFetched * 100).toFixed(2);
  const lines = [`fetched ${s.bytesFetched} bytes (${formatBytes(s.bytesFetched)}) in ${s.requests} requests: ${pct}% of ${formatBytes(s.blobBytes)} of layer blobs`];
  for (const l of s.layers) {
    lines.push(
      l.opened
        ? `  layer ${l.index} ${shortDigest(l.digest)}: ${l.bytesFetched} bytes in ${l.requests} requests, ${l.chunksFetched} of ${l.chunkCount} chunks`
        : `  layer ${l.index} ${shortDigest(l.digest)}: not opened`,
    );
  }
  process.stderr.write(`${lines.join('\n')}\n`);
}

/** Opens the session, runs `fn`, prints stats if asked, always closes. */
async function withSession(args: BrowseArgs, options: Omit<BrowseOpenOptions, 'cacheDir'>, json: boolean, fn: (s: BrowseSession) => Promise<void>): Promise<void> {
  const session = await BrowseSession.open(args.reference, args, { ...options, cacheDir: args['cache-dir'] });
  try {
    await fn(session);
  } finally {
    if (args.stats) printStats(session.stats(), json);
    await session.close();
  }
}

/** Writes to stdout respecting back-pressure; stops quietly once the reader is gone (EPIPE: `| head`). */
class Stdout {
  #closed = false;
  #error: Error | undefined;
  constructor() {
    process.stdout.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EPIPE') this.#closed = true;
      else this.#error = err;
    });
  }
  get closed(): boolean {
    return this.#closed;
  }
  async write(data: string | Buffer): Promise<void> {
    if (this.#error) throw this.#error;
    if (this.#closed) return;
    if (!process.stdout.write(data)) {
      // Errors (EPIPE) arrive through the listener above; any of these events ends the wait.
      await new Promise<void>((resolve) => {
        const done = (): void => {
          for (const event of ['drain', 'close', 'error']) process.stdout.off(event, done);
          resolve();
        };
        for (const event of ['drain', 'close', 'error']) process.stdout.once(event, done);
      });
    }
    if (this.#error) throw this.#error;
  }
}

function normalizedPath(path: string): string {
  const parts = path.split('/').filter((p) => p !== '' && p !== '.');
  return `/${parts.join('/')}`;
}

function joinPath(base: string, name: string): string {
  return base === '/' ? `/${name}` : `${base}/${name}`;
}

export async function runLs(args: BrowseArgs & { path: string; long: boolean; recursive: boolean; json: boolean }): Promise<void> {
  await withSession(args, { readahead: false }, args.json, async (session) => {
    const view = await session.view(args.layer);
    // Like ls: a trailing slash follows a symlink to a directory; the link itself is listed otherwise.
    const node = await view.resolve(args.path, { followFinal: args.path.endsWith('/') });
    const base = normalizedPath(args.path);
    const rawIndex = args.layer !== undefined ? session.layerIndex(args.layer) : undefined;
    const out = new Stdout();
    const json: EntryJson[] = [];
    const emit = async (n: ViewNode, path: string, name: string): Promise<void> => {
      if (!args.long && !args.json) {
        await out.write(`${args.recursive ? path : name}\n`);
        return;
      }
      const e = await entryJson(view, n, path, name, rawIndex ?? n.layer);
      if (args.json) json.push(e);
      else await out.write(`${longLine(e, n.inode.mtime, args.recursive ? path : name)}\n`);
    };
    if (node.inode.type !== 'dir') {
      await emit(node, base, base.split('/').pop() || '/');
    } else if (args.recursive) {
      for await (const item of view.walk(node, base)) {
        if (out.closed) break;
        if (item.depth === 0) continue;
        await emit(item.node, item.path, item.path.slice(item.path.lastIndexOf('/') + 1));
      }
    } else {
      for (const entry of await view.readdir(node)) {
        if (out.closed) break;
        const name = displayName(entry.name);
        // Names alone come from the directory blocks; only -l and --json need each entry's inode.
        if (!args.long && !args.json) await out.write(`${name}\n`);
        else await emit(await view.child(node, entry), joinPath(base, name), name);
      }
    }
    if (args.json) await out.write(`${JSON.stringify(json, null, 2)}\n`);
  });
}

export async function runCat(args: BrowseArgs & { path: string }): Promise<void> {
  await withSession(args, { readahead: true }, false, async (session) => {
    const view: LayeredView = await session.view(args.layer);
    const node = await view.resolve(args.path, { followFinal: true });
    if (node.inode.type === 'dir') throw new ErofsPathError('EISDIR', args.path, 'is a directory');
    if (node.inode.type !== 'file') throw new ErofsPathError('EINVAL', args.path, `is a ${node.inode.type}, not a regular file`);
    const out = new Stdout();
    for await (const piece of view.stream(node)) {
      if (out.closed) break;
      await out.write(piece);
    }
  });
}

export async function runStat(args: BrowseArgs & { path: string; json: boolean; dereference: boolean }): Promise<void> {
  await withSession(args, { readahead: false }, args.json, async (session) => {
    const view = await session.view(args.layer);
    const node = await view.resolve(args.path, { followFinal: args.dereference });
    const index = args.layer !== undefined ? session.layerIndex(args.layer) : node.layer;
    const report = await statJson({
      view,
      node,
      path: normalizedPath(args.path),
      layerIndex: index,
      layerDigest: session.descriptors[index]!.digest,
      chunkSize: session.lazyLayer(index)!.table.chunkSize,
      maxExtents: STAT_MAX_EXTENTS,
    });
    await new Stdout().write(args.json ? `${JSON.stringify(report, null, 2)}\n` : statText(report));
  });
}

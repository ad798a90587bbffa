// Verified copies of remote layers' chunk tables, `<root>/layers/<alg>-<hex>/chunktable`: the exact blob bytes
// of the chunk table frame ([chunk_table_offset, dm-verity offset or blob end)), written atomically when the
// layer is first mounted. After a restart the layer is mounted from this copy without asking the registry;
// the copy is checked again against the descriptor's chunk_digest (loadChunkTable) before it is used, so a
// damaged file is refused (and the table fetched again) rather than trusted.
import { mkdir, readFile, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { loadChunkTable } from '../chunktable/index.js';
import type { ChunkTable } from '../chunktable/index.js';
import type { Descriptor } from '../oci/types.js';
import { parseDigest } from '../util/digest.js';
import { writeFileAtomic } from './atomicfile.js';

export const LAYERS_DIR = 'layers';
export const CHUNK_TABLE_FILE = 'chunktable';

/** `<root>/layers/<alg>-<hex>`: where one remote layer keeps its table and mount points. */
export function layerDir(root: string, layerDigest: string): string {
  const { algorithm, hex } = parseDigest(layerDigest);
  return join(root, LAYERS_DIR, `${algorithm}-${hex}`);
}

/** The layer digest a layer dir name stands for, or undefined for other names. */
export function digestOfLayerDirName(name: string): string | undefined {
  const m = /^(sha256|sha512)-([0-9a-f]+)$/.exec(name);
  return m ? `${m[1]}:${m[2]}` : undefined;
}

/**
 * Reads a chunk table through `readRange` (e.g. the registry), verifying it against the descriptor, and
 * returns it with the raw frame bytes that were read.
 */
export async function fetchChunkTable(desc: Descriptor, readRange: (start: number, end: number) => Promise<Uint8Array>): Promise<{ table: ChunkTable; frame: Buffer }> {
  let frame: Buffer | undefined;
  const table = await loadChunkTable(desc, async (start, end) => {
    const bytes = Buffer.from(await readRange(start, end));
    frame = bytes;
    return bytes;
  });
  return { table, frame: frame! };
}

export async function saveChunkTable(root: string, layerDigest: string, frame: Buffer): Promise<void> {
  const dir = layerDir(root, layerDigest);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await writeFileAtomic(dir, CHUNK_TABLE_FILE, frame);
}

/**
 * The persisted table of a layer, verified; undefined when there is none. Throws (with the layer digest)
 * when the file does not match the descriptor.
 */
export async function loadSavedChunkTable(root: string, desc: Descriptor): Promise<ChunkTable | undefined> {
  const file = join(layerDir(root, desc.digest), CHUNK_TABLE_FILE);
  let frame: Buffer;
  try {
    frame = await readFile(file);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  return loadChunkTable(
    desc,
    async (start, end) => {
      if (end - start !== frame.length) {
        throw new Error(`saved chunk table ${file} has ${frame.length} bytes, the descriptor places ${end - start}`);
      }
      return frame;
    },
    { context: ` (saved chunk table ${file} of layer ${desc.digest})` },
  );
}

export async function removeLayerDir(root: string, layerDigest: string): Promise<void> {
  await rm(layerDir(root, layerDigest), { recursive: true, force: true });
}

// Crash-safe small-file writes for the snapshotter's metadata: a uniquely named temp file in the same
// directory, written and fsynced, renamed over the final name, then the directory fsynced so that the
// rename itself survives a power loss. Readers therefore see the old file or the new one, never a mix;
// a crash leaves at most a temp file, which TEMP_FILE_PATTERN recognizes for cleanup.
import { randomBytes } from 'node:crypto';
import { open, rename, unlink } from 'node:fs/promises';
import { join } from 'node:path';

/** Random bytes in a temp file's name (with the pid: unique across processes). */
const TEMP_RANDOM_BYTES = 6;
/** Mode of metadata files: root only. */
export const METADATA_FILE_MODE = 0o600;
/** Names of temp files left by writeFileAtomic: ".<final name>.tmp-<pid>-<hex>". */
export const TEMP_FILE_PATTERN = /^\..+\.tmp-\d+-[0-9a-f]+$/;

export async function fsyncDir(dir: string): Promise<void> {
  const fh = await open(dir, 'r');
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Writes `data` to `dir/name` atomically and durably. */
export async function writeFileAtomic(dir: string, name: string, data: Uint8Array | string): Promise<void> {
  const tmp = join(dir, `.${name}.tmp-${process.pid}-${randomBytes(TEMP_RANDOM_BYTES).toString('hex')}`);
  const fh = await open(tmp, 'wx', METADATA_FILE_MODE);
  try {
    try {
      await fh.writeFile(data);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, join(dir, name));
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  await fsyncDir(dir);
}

/** Removes `dir/name` durably; a missing file is not an error. */
export async function removeFileDurably(dir: string, name: string): Promise<void> {
  try {
    await unlink(join(dir, name));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return;
  }
  await fsyncDir(dir);
}

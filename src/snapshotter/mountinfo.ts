// Reads /proc/self/mountinfo: which mounts sit at or below a directory, with their filesystem type and
// source, newest last (the kernel lists mounts in the order they were made).
import { readFile } from 'node:fs/promises';

export interface MountEntry {
  mountpoint: string;
  /** "major:minor" of the mounted filesystem. */
  device: string;
  /** Filesystem type: "erofs", "overlay", "fuse.erofs-lazy", ... */
  type: string;
  source: string;
  /** Path inside the filesystem that is mounted (not "/" for a bind mount of a subdirectory). */
  root: string;
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescape(field: string): string {
  return field.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8)));
}

export function parseMountinfo(text: string): MountEntry[] {
  const entries: MountEntry[] = [];
  for (const line of text.split('\n')) {
    const fields = line.split(' ');
    const dash = fields.indexOf('-');
    if (dash < 6 || fields.length < dash + 3) continue;
    entries.push({
      mountpoint: unescape(fields[4]!),
      device: fields[2]!,
      root: unescape(fields[3]!),
      type: fields[dash + 1]!,
      source: unescape(fields[dash + 2]!),
    });
  }
  return entries;
}

export async function readMounts(): Promise<MountEntry[]> {
  return parseMountinfo(await readFile('/proc/self/mountinfo', 'utf8'));
}

function isAtOrBelow(path: string, dir: string): boolean {
  return path === dir || path.startsWith(`${dir.endsWith('/') ? dir : `${dir}/`}`);
}

/** Mounts at or below `dir`, oldest first. */
export async function mountsBelow(dir: string): Promise<MountEntry[]> {
  return (await readMounts()).filter((m) => isAtOrBelow(m.mountpoint, dir));
}

export async function mountPointsBelow(dir: string): Promise<string[]> {
  return (await mountsBelow(dir)).map((m) => m.mountpoint);
}

export async function isMounted(path: string): Promise<boolean> {
  return (await readMounts()).some((m) => m.mountpoint === path);
}

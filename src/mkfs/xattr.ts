// Extended attributes for the EROFS writer: reading every xattr of a tree with one `getfattr -R` process
// (Node has no listxattr/getxattr; the repository writes xattrs with setfattr the same way), parsing its
// hex dump carefully (paths and names quoted as \ooo octal, values hex), and encoding an inode's inline
// xattr body: a 12-byte header with no shared xattrs, then entries {name length, prefix index, value size,
// name suffix, value} each padded to 4 bytes, sorted by (index, name) so that output is deterministic.
// Names whose prefix EROFS cannot index are left out, as mkfs.erofs leaves them out.
import { spawn } from 'node:child_process';
import {
  MAX_XATTR_ICOUNT,
  MAX_XATTR_NAME_LEN,
  MAX_XATTR_VALUE_SIZE,
  MkfsError,
  XATTR_ENTRY_HEADER_SIZE,
  XATTR_IBODY_HEADER_SIZE,
  XATTR_PREFIXES,
  alignUp,
} from './format.js';

export const GETFATTR = 'getfattr';
/** Bytes of getfattr's stderr kept for an error message. */
const STDERR_TAIL_BYTES = 2000;
const FILE_LINE_PREFIX = '# file: ';

/** One xattr as read from the tree: its full name ("user.foo") and value, both raw bytes. */
export interface SourceXattr {
  /** Full name as a binary (latin1) string. */
  name: string;
  value: Buffer;
}

/**
 * Name prefixes EROFS indexes (EROFS_XATTR_INDEX_*, the reader's table); the ACL names, which do not end in
 * '.', are whole names with an empty suffix.
 */
const PREFIXES: ReadonlyArray<{ prefix: string; index: number; whole: boolean }> = [...XATTR_PREFIXES].map(([index, prefix]) => ({
  prefix,
  index,
  whole: !prefix.endsWith('.'),
}));

/** Undoes getfattr's quoting: every \ooo becomes the byte it stands for (backslashes are always quoted). */
export function unquoteGetfattr(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(Number.parseInt(o, 8) & 0xff));
}

function parseValue(text: string, where: string): Buffer {
  if (text === '' || text === '""') return Buffer.alloc(0);
  if (/^0x([0-9a-fA-F]{2})*$/.test(text)) return Buffer.from(text.slice(2), 'hex');
  throw new MkfsError(`cannot parse getfattr value ${JSON.stringify(text.slice(0, 40))} (${where}): expected hex`);
}

/**
 * Parses `getfattr -d -m - -e hex --absolute-names` output (latin1 text): path (binary string) -> xattrs
 * in the order listed.
 */
export function parseGetfattrDump(text: string): Map<string, SourceXattr[]> {
  const out = new Map<string, SourceXattr[]>();
  let current: SourceXattr[] | undefined;
  let currentPath = '';
  for (const line of text.split('\n')) {
    if (line === '') continue;
    if (line.startsWith(FILE_LINE_PREFIX)) {
      currentPath = unquoteGetfattr(line.slice(FILE_LINE_PREFIX.length));
      current = out.get(currentPath) ?? [];
      out.set(currentPath, current);
      continue;
    }
    const eq = line.indexOf('=');
    if (current === undefined || eq <= 0) {
      throw new MkfsError(`unexpected getfattr output line ${JSON.stringify(line.slice(0, 80))}${current ? ` for ${currentPath}` : ''}`);
    }
    const name = unquoteGetfattr(line.slice(0, eq));
    current.push({ name, value: parseValue(line.slice(eq + 1), `${name} of ${currentPath}`) });
  }
  return out;
}

/**
 * Every xattr under `root` (an absolute, symlink-free directory path), symlinks not followed, with one
 * getfattr process. Keys are absolute paths as binary strings; entries without xattrs are absent.
 */
export function readTreeXattrs(root: string): Promise<Map<string, SourceXattr[]>> {
  return new Promise((resolve, reject) => {
    const child = spawn(GETFATTR, ['-R', '-P', '-h', '-d', '-m', '-', '-e', 'hex', '--absolute-names', '--', root], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, LC_ALL: 'C' },
    });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => chunks.push(d));
    child.stderr.setEncoding('latin1');
    child.stderr.on('data', (d: string) => {
      stderr = (stderr + d).slice(-STDERR_TAIL_BYTES);
    });
    child.on('error', (err) => reject(new MkfsError(`cannot run ${GETFATTR} on ${root}: ${err.message}`)));
    child.on('close', (code, signal) => {
      if (code !== 0) {
        const why = stderr.trim().split('\n').slice(-3).join(' | ') || (signal ? `signal ${signal}` : 'no error output');
        reject(new MkfsError(`${GETFATTR} failed (exit ${code ?? signal}) reading the xattrs of ${root}: ${why}`));
        return;
      }
      try {
        resolve(parseGetfattrDump(Buffer.concat(chunks).toString('latin1')));
      } catch (err) {
        reject(err);
      }
    });
  });
}

/** An xattr ready to be written: prefix index, name suffix (bytes) and value. */
export interface EncodedXattrEntry {
  index: number;
  suffix: Buffer;
  value: Buffer;
}

/** The prefix index and suffix of a full name, or undefined when EROFS cannot store the name. */
export function splitXattrName(name: string): { index: number; suffix: Buffer } | undefined {
  for (const p of PREFIXES) {
    if (p.whole ? name === p.prefix : name.startsWith(p.prefix) && name.length > p.prefix.length) {
      return { index: p.index, suffix: Buffer.from(name.slice(p.prefix.length), 'latin1') };
    }
  }
  return undefined;
}

/**
 * The inline xattr body of an inode (empty Buffer without xattrs), and its i_xattr_icount. `where` names
 * the entry in errors.
 */
export function encodeXattrBody(xattrs: readonly SourceXattr[], where: string): { body: Buffer; icount: number } {
  const entries: EncodedXattrEntry[] = [];
  for (const x of xattrs) {
    const split = splitXattrName(x.name);
    if (split === undefined) continue;
    if (split.suffix.length > MAX_XATTR_NAME_LEN) {
      throw new MkfsError(`xattr ${x.name.slice(0, 40)}... of ${where}: name suffix of ${split.suffix.length} bytes exceeds ${MAX_XATTR_NAME_LEN}`, where);
    }
    if (x.value.length > MAX_XATTR_VALUE_SIZE) {
      throw new MkfsError(`xattr ${x.name} of ${where}: value of ${x.value.length} bytes exceeds ${MAX_XATTR_VALUE_SIZE}`, where);
    }
    entries.push({ ...split, value: x.value });
  }
  if (entries.length === 0) return { body: Buffer.alloc(0), icount: 0 };
  entries.sort((a, b) => a.index - b.index || Buffer.compare(a.suffix, b.suffix));
  for (let i = 1; i < entries.length; i++) {
    if (entries[i]!.index === entries[i - 1]!.index && entries[i]!.suffix.equals(entries[i - 1]!.suffix)) {
      throw new MkfsError(`${where} lists xattr index ${entries[i]!.index} name ${entries[i]!.suffix.toString('latin1')} twice`, where);
    }
  }
  let size = XATTR_IBODY_HEADER_SIZE;
  for (const e of entries) size += alignUp(XATTR_ENTRY_HEADER_SIZE + e.suffix.length + e.value.length, 4);
  const icount = (size - XATTR_IBODY_HEADER_SIZE) / 4 + 1;
  if (icount > MAX_XATTR_ICOUNT) {
    throw new MkfsError(`xattrs of ${where} need ${size} bytes, more than an inline xattr body can hold`, where);
  }
  const body = Buffer.alloc(size);
  let at = XATTR_IBODY_HEADER_SIZE;
  for (const e of entries) {
    body.writeUInt8(e.suffix.length, at);
    body.writeUInt8(e.index, at + 1);
    body.writeUInt16LE(e.value.length, at + 2);
    e.suffix.copy(body, at + XATTR_ENTRY_HEADER_SIZE);
    e.value.copy(body, at + XATTR_ENTRY_HEADER_SIZE + e.suffix.length);
    at += alignUp(XATTR_ENTRY_HEADER_SIZE + e.suffix.length + e.value.length, 4);
  }
  return { body, icount };
}

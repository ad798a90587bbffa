// `erofs-lazy ls` on a real distribution image: Debian bookworm minbase + python3 (debootstrap from Debian's
// mirror, the same tree the cold-start benchmark uses and caches), converted with 1 MiB chunks and pushed to
// the local registry. Listing / fetches under 2% of the blob bytes and `cat` of a file is exact. At the
// format's default 4 MiB chunks the one chunk holding the superblock and root directory is already 2.7% of
// this image's blob (measured), so the test converts with 1 MiB chunks, as one would for start-up-bound images.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { debianPython } from '../../src/bench/images.js';
import { DEFAULT_BENCH_WORK_DIR } from '../../src/bench/coldstart.js';
import type { BrowseStats } from '../../src/cli/browseimage.js';
import type { EntryJson } from '../../src/cli/browseformat.js';
import { openImageStore } from '../../src/fetch/index.js';
import { buildImageFromDirs } from '../../src/sample/build.js';
import { runCli } from '../helpers/cli.js';
import { startRegistry, type TestRegistry } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';

const CHUNK_BYTES = 1024 * 1024;
const MIN_IMAGE_BYTES = 100 * 1024 * 1024;
const MAX_LS_FRACTION = 0.02;
/** Where the Debian tree is built once and reused (shared with `erofs-lazy bench`). */
const TREE_CACHE = process.env.EROFS_LAZY_BENCH_WORK ?? DEFAULT_BENCH_WORK_DIR;

function statsOf(stderr: string): BrowseStats {
  const line = stderr.split('\n').find((l) => l.startsWith('{"stats"'));
  assert.ok(line, `no stats line in ${JSON.stringify(stderr)}`);
  return (JSON.parse(line) as { stats: BrowseStats }).stats;
}

describe('erofs-lazy ls on a converted Debian image', () => {
  let registry: TestRegistry;
  let tree = '';
  let ref = '';
  const cleanups: Array<() => unknown> = [];

  before(async () => {
    registry = await startRegistry();
    const work = await tempDir({ after: (fn: () => unknown) => cleanups.push(fn) }, 'erofs-lazy-test-debian-');
    tree = await debianPython({ work: TREE_CACHE, registry: registry.host, log: (line) => process.stderr.write(`# ${line}\n`) });
    const store = openImageStore(`${registry.host}/debian/python:plain`, {});
    await buildImageFromDirs(store, [tree], { workDir: work });
    await store.close();
    ref = `${registry.host}/debian/python:erofs`;
    const converted = await runCli(['convert', `${registry.host}/debian/python:plain`, ref, '--chunk-size', String(CHUNK_BYTES)]);
    assert.equal(converted.code, 0, converted.stderr);
  });
  after(async () => {
    await registry?.stop();
    for (const c of cleanups.reverse()) await c();
  });

  test('ls / fetches under 2% of the blob; cat and stat read what they need', async () => {
    const inspect = await runCli(['inspect', ref, '--json']);
    assert.equal(inspect.code, 0, inspect.stderr);
    const layer = (JSON.parse(inspect.stdout) as { layers: Array<{ chunkTable?: { uncompressedSize: number } }> }).layers[0]!;
    assert.ok(layer.chunkTable!.uncompressedSize >= MIN_IMAGE_BYTES, `EROFS image of ${layer.chunkTable!.uncompressedSize} bytes`);

    const ls = await runCli(['ls', ref, '/', '--json', '--stats']);
    assert.equal(ls.code, 0, ls.stderr);
    const names = (JSON.parse(ls.stdout) as EntryJson[]).map((e) => e.name);
    for (const name of ['bin', 'etc', 'usr', 'var']) assert.ok(names.includes(name), `${name} in ${names.join(' ')}`);
    const stats = statsOf(ls.stderr);
    assert.ok(stats.fractionFetched < MAX_LS_FRACTION, `ls / fetched ${(stats.fractionFetched * 100).toFixed(2)}% of ${stats.blobBytes} bytes`);

    const cat = await runCli(['cat', ref, '/etc/os-release']);
    assert.equal(cat.code, 0, cat.stderr);
    assert.equal(cat.stdout, await readFile(join(tree, 'etc/os-release'), 'utf8'));

    const stat = await runCli(['stat', ref, '/usr/bin/python3', '--json']);
    assert.equal(stat.code, 0, stat.stderr);
    assert.equal((JSON.parse(stat.stdout) as { type: string }).type, 'symlink');
  });
});

// The cold-start benchmark end to end on a small image (the busybox sample with a 48 MiB file) and a
// workload that reads a little of it: every mode but containerd runs once on loopback and on an
// emulated link through the throttling proxy, and the JSON, Markdown and SVG files say what happened.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { LOOPBACK_LINK, runColdStartBench } from '../../src/bench/coldstart.js';
import type { Scenario } from '../../src/bench/coldstart.js';
import type { ColdStartResult, LinkProfile, ModeName } from '../../src/bench/types.js';
import { writeSampleLayers } from '../../src/sample/build.js';
import { CLI_PATH } from '../helpers/cli.js';
import { REPO_ROOT } from '../helpers/registry.js';
import { tempDir } from '../helpers/tmp.js';

const EMULATED: LinkProfile = { name: 'emulated', rttMs: 10, mbitPerSecond: 400, viaProxy: true };
const MODES: ModeName[] = ['full-pull', 'full-pull-erofs', 'local', 'lazy-cold', 'lazy-warm', 'lazy-prefetch', 'lazy-paths'];
const ALWAYS: ModeName[] = ['full-pull', 'full-pull-erofs', 'local', 'lazy-cold', 'lazy-warm'];

test('a one-run benchmark of a small image measures every mode on both links and writes the report', { timeout: 600_000 }, async (t) => {
  const work = await tempDir(t, 'bench-quick-');
  const scenario: Scenario = {
    name: 'sample-cat',
    recipe: { name: 'sample', description: 'the busybox sample image, two layers', cmd: ['/bin/sh'], layers: () => writeSampleLayers(join(work, 'layers')) },
    workload: {
      kind: 'exec',
      name: 'cat-head',
      description: 'cat /etc/os-release and 100 kB of the big file',
      argv: ['/bin/sh', '-c', 'cat /etc/os-release && head -c 100000 /usr/share/sample/big.bin | wc -c'],
      expect: 'erofs-lazy sample',
    },
  };
  const { result, files } = await runColdStartBench({
    work,
    runs: 1,
    quick: true,
    bigFileMiB: 1,
    links: [LOOPBACK_LINK, EMULATED],
    scenarios: ['sample-cat'],
    extraScenarios: [scenario],
    modes: MODES,
    prefetchPaths: ['/etc/os-release', '/bin'],
    cliPath: CLI_PATH,
    repoRoot: REPO_ROOT,
    outDir: join(work, 'out'),
    outName: 'report',
    command: 'test',
    log: () => undefined,
  });

  assert.deepEqual(result.scenarios.map((s) => s.link), ['loopback', 'emulated']);
  const image = result.images[0]!;
  assert.equal(image.layers, 2);
  assert.ok(image.plainBytes > 40e6 && image.seekableBytes > 40e6, `image sizes ${image.plainBytes}, ${image.seekableBytes}`);
  for (const sc of result.scenarios) {
    const mode = (m: ModeName) => sc.modes.find((x) => x.mode === m)!;
    for (const m of ALWAYS) {
      const s = mode(m);
      assert.equal(s.runs.length, 1, `${sc.id} ${m}: ${s.skipped ?? s.failures?.join('; ')}`);
      assert.ok(s.median!.readyMs! > 0 && s.median!.doneMs! >= s.median!.readyMs!, `${sc.id} ${m} times`);
    }
    const full = mode('full-pull').median!;
    const cold = mode('lazy-cold').median!;
    const warm = mode('lazy-warm').median!;
    assert.equal(mode('full-pull').ratios!.doneVsFullPull, 1);
    // The full pull fetches the whole plain image; the lazy mount a small part of the seekable one.
    assert.ok(full.bytesFetched! >= image.plainBytes, `${sc.id} full pull fetched ${full.bytesFetched}`);
    assert.ok(cold.fractionFetched! > 0 && cold.fractionFetched! < 0.5, `${sc.id} lazy cold fetched ${cold.fractionFetched}`);
    assert.ok(warm.bytesFetched! < cold.bytesFetched!, `${sc.id} warm fetched ${warm.bytesFetched} vs cold ${cold.bytesFetched}`);
    assert.equal(mode('local').median!.bytesFetched, 0);
    assert.ok(cold.peakRssBytes! > 10e6 && cold.memoryCacheBytes! > 0, `${sc.id} peak RSS ${cold.peakRssBytes}`);
    const paths = mode('lazy-paths');
    assert.equal(paths.runs.length, 1, `lazy-paths: ${paths.skipped ?? paths.failures?.join('; ')}`);
    assert.ok(paths.median!.fractionFetched! < 0.5, `${sc.id} lazy-paths fetched ${paths.median!.fractionFetched}`);
    const prefetch = mode('lazy-prefetch');
    assert.ok(prefetch.runs.length === 1 || /--record|profile/.test(prefetch.skipped ?? ''), `prefetch: ${prefetch.skipped}`);
  }
  const emulated = result.scenarios[1]!.modes;
  const full = emulated.find((m) => m.mode === 'full-pull')!.median!;
  assert.equal(full.countsFrom, 'proxy');
  // The proxy caps the link: the plain image cannot arrive faster than 400 Mbit/s.
  const floorMs = (image.plainBytes / ((EMULATED.mbitPerSecond! * 1e6) / 8)) * 1000;
  assert.ok(full.readyMs! >= floorMs * 0.95, `full pull ready in ${full.readyMs} ms, under the link's ${floorMs.toFixed(0)} ms floor`);
  assert.ok(full.requests! >= 4, `full pull made ${full.requests} requests`);

  const json = JSON.parse(await readFile(join(work, 'out/report.json'), 'utf8')) as ColdStartResult;
  assert.equal(json.kind, 'erofs-lazy-coldstart-bench');
  assert.equal(json.scenarios.length, 2);
  assert.ok(json.machine.cores > 0 && json.machine.kernel.length > 0);
  const md = await readFile(join(work, 'out/report.md'), 'utf8');
  for (const sc of result.scenarios) {
    assert.ok(md.includes(`## ${sc.id}: cat-head`), `section for ${sc.id}`);
    for (const m of ALWAYS) assert.match(md, new RegExp(`^\\| ${m} \\|`, 'm'));
  }
  const svgs = files.filter((f) => f.endsWith('.svg'));
  assert.equal(svgs.length, 2);
  for (const f of svgs) assert.ok(md.includes(`](${f.split('/').pop()})`) && readFileSync(f, 'utf8').includes('</svg>'));
  // Nothing left mounted by the bench.
  assert.ok(!readFileSync('/proc/self/mounts', 'utf8').includes(work), 'a mount below the work dir is left');
});

// The cold-start benchmark's result arithmetic and report: medians and ratios against the full pull and
// the local loop mount, the targets checked from the medians, a Markdown table row and a chart bar
// for every mode that ran, a reason for every mode that did not, escaped SVG text, and deterministic,
// aligned random-read offsets.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { barChartSvg, checkTargets, escapeXml, renderReport } from '../../src/bench/report.js';
import { MODE_LABELS, MODE_NAMES, median, medianOf, summarizeModes } from '../../src/bench/types.js';
import type { ColdStartResult, ModeName, ModeSummary, RunMeasure } from '../../src/bench/types.js';
import { randomOffsets } from '../../src/bench/workloads.js';

const MIB = 1024 * 1024;

function runOf(doneMs: number, bytes: number | null, extra: Partial<RunMeasure> = {}): RunMeasure {
  return {
    readyMs: doneMs / 4,
    workloadMs: (doneMs * 3) / 4,
    doneMs,
    bytesFetched: bytes,
    requests: bytes === null ? null : 10,
    fractionFetched: bytes === null ? null : bytes / 100e6,
    countsFrom: 'proxy',
    peakRssBytes: null,
    memoryCacheBytes: null,
    ...extra,
  };
}

function modes(spec: Partial<Record<ModeName, RunMeasure[] | string>>): ModeSummary[] {
  return MODE_NAMES.map((mode) => {
    const v = spec[mode];
    if (typeof v === 'string' || v === undefined) return { mode, label: MODE_LABELS[mode], skipped: v ?? 'not in this test', runs: [] };
    return { mode, label: MODE_LABELS[mode], runs: v };
  });
}

function sampleResult(): ColdStartResult {
  const python = modes({
    'full-pull': [runOf(6000, 70e6), runOf(5800, 70e6), runOf(6200, 70e6)],
    'full-pull-erofs': [runOf(7000, 80e6)],
    local: [runOf(400, 0)],
    'lazy-cold': [runOf(1400, 10e6, { peakRssBytes: 300 * MIB, memoryCacheBytes: 128 * MIB }), runOf(1200, 9e6, { peakRssBytes: 250 * MIB, memoryCacheBytes: 128 * MIB }), runOf(1300, 11e6, { peakRssBytes: 260 * MIB, memoryCacheBytes: 128 * MIB })],
    'lazy-warm': [runOf(700, 0)],
    'lazy-prefetch': [runOf(1000, 12e6)],
    'containerd-overlayfs': 'containerd is not available (see the notes)',
    'containerd-lazy': 'containerd is not available (see the notes)',
  });
  const big = modes({
    'full-pull': [runOf(9000, 1100e6, { throughputMBps: 600 })],
    local: [runOf(2000, 0, { throughputMBps: 640 })],
    'lazy-cold': [runOf(9000, 1100e6, { throughputMBps: 120 })],
    'lazy-warm': [runOf(4000, 0, { throughputMBps: 600 })],
  });
  summarizeModes(python);
  summarizeModes(big);
  return {
    kind: 'erofs-lazy-coldstart-bench',
    version: 1,
    date: '2026-01-01T00:00:00.000Z',
    command: 'erofs-lazy bench --runs 3',
    quick: false,
    machine: { cpuModel: 'Test CPU <x86>', cores: 2, memoryGiB: 24, kernel: '6.1', node: 'v20', disk: '/dev/vda (ext4, 256G, non-rotational)', os: 'Debian' },
    loadAverage: { start: [1, 1, 1], end: [1.5, 1, 1] },
    durationSeconds: 600,
    settings: { runs: 3, links: [{ name: 'emulated', rttMs: 20, mbitPerSecond: 200, viaProxy: true }], modes: [...MODE_NAMES], workDir: '/var/tmp/x' },
    images: [{ name: 'debian-python', description: 'Debian', layers: 1, treeBytes: 170e6, plainBytes: 70e6, seekableBytes: 100e6, rawBytes: 180e6, chunkSize: 'default' }],
    scenarios: [
      { id: 'debian-python on emulated', image: 'debian-python', workload: 'python-import', workloadDescription: 'python3', link: 'emulated', modes: python },
      { id: 'bigfile-1024m on loopback', image: 'bigfile-1024m', workload: 'sequential', workloadDescription: 'dd', link: 'loopback', modes: big },
    ],
    notes: ['containerd modes skipped: missing scripts/containerd.'],
  };
}

test('medians per field, null when any run lacks the field', () => {
  assert.equal(median([3, 1, 2]), 2);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  const m = medianOf([runOf(1000, 5), runOf(3000, null), runOf(2000, 7)]);
  assert.equal(m.doneMs, 2000);
  assert.equal(m.bytesFetched, null);
  assert.equal(m.countsFrom, 'proxy');
});

test('ratios are taken against the full pull and, for throughput, the local loop mount', () => {
  const r = sampleResult();
  const python = r.scenarios[0]!.modes;
  const cold = python.find((m) => m.mode === 'lazy-cold')!;
  assert.equal(cold.median!.doneMs, 1300);
  assert.equal(cold.ratios!.doneVsFullPull, 1300 / 6000);
  assert.equal(cold.ratios!.bytesVsFullPull, 10e6 / 70e6);
  assert.equal(python.find((m) => m.mode === 'full-pull')!.ratios!.doneVsFullPull, 1);
  assert.equal(python.find((m) => m.mode === 'containerd-lazy')!.median, undefined);
  const warm = r.scenarios[1]!.modes.find((m) => m.mode === 'lazy-warm')!;
  assert.equal(warm.ratios!.throughputVsLocal, 600 / 640);
});

test('targets are checked from the medians', () => {
  const checks = checkTargets(sampleResult());
  const by = (prefix: string) => checks.find((c) => c.target.includes(prefix))!;
  assert.equal(by('lazy cold ≤').met, true); // 21.7% of the full pull
  assert.equal(by('fetches ≤').met, true); // 10% of 100 MB
  assert.equal(by('recorded profile').met, false); // 1000/6000 = 16.7% > 15%
  assert.equal(by('warm disk cache').met, true); // 93.75%
  assert.equal(by('300 MB/s').met, false); // 120 MB/s
  const mem = by('peak memory');
  assert.equal(mem.met, true); // worst 300 - 128 = 172 MiB beyond the cache
  assert.match(mem.measured, /172 MiB beyond/);
});

test('the report has a table row or a reason for every mode, charts per scenario, and the machine', () => {
  const r = sampleResult();
  const { markdown, svgs } = renderReport(r, 'coldstart-test');
  // A time chart per scenario, and a throughput chart for the read workload.
  assert.deepEqual(svgs.map((x) => x.name), [
    'coldstart-test-1-debian-python-python-import-emulated-time.svg',
    'coldstart-test-2-bigfile-1024m-sequential-loopback-time.svg',
    'coldstart-test-2-bigfile-1024m-sequential-loopback-throughput.svg',
  ]);
  for (const sc of r.scenarios) {
    const section = markdown.slice(markdown.indexOf(`## ${sc.id}`));
    for (const m of sc.modes) {
      if (m.median) assert.match(section, new RegExp(`^\\| ${m.mode} \\|`, 'm'), `row for ${m.mode} in ${sc.id}`);
      else assert.ok(section.includes(`- ${m.mode} not measured: ${m.skipped}`), `reason for ${m.mode} in ${sc.id}`);
    }
  }
  assert.ok(markdown.includes('Command: `erofs-lazy bench --runs 3`'));
  assert.ok(markdown.includes('Test CPU <x86>, 2 cores'));
  assert.ok(markdown.includes('(ext4, 256G, non-rotational)'));
  for (const svg of svgs) assert.ok(markdown.includes(`](${svg.name})`), `${svg.name} is linked`);
  assert.ok(markdown.includes('containerd modes skipped'));
  const timeChart = svgs[0]!.content;
  assert.match(timeChart, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg"/);
  assert.ok(timeChart.trimEnd().endsWith('</svg>'));
  // Six modes ran: two stacked segments each, plus the background and two legend swatches.
  assert.equal(timeChart.match(/<rect /g)!.length, 1 + 6 * 2 + 2);
  assert.ok(timeChart.includes('>lazy-cold</text>'));
  assert.ok(timeChart.includes('1.30 s (21.7%)'));
  const tpChart = svgs[2]!.content;
  assert.ok(tpChart.includes('600 MB/s (93.8% of local)'));
  // Full pulls read from the page cache they just filled: not in the throughput chart.
  assert.ok(!tpChart.includes('>full-pull</text>') && tpChart.includes('>lazy-cold</text>'));
});

test('bar widths follow the values and text is escaped', () => {
  const svg = barChartSvg('a <b> & "c"', [
    { label: 'x<y', segments: [{ value: 2, colour: '#000', title: 't' }], note: 'n&m' },
    { label: 'z', segments: [{ value: 1, colour: '#000', title: 't' }], note: '' },
  ], []);
  assert.ok(svg.includes('a &lt;b&gt; &amp; &quot;c&quot;'));
  assert.ok(svg.includes('>x&lt;y<') && svg.includes('>n&amp;m<'));
  const widths = [...svg.matchAll(/<rect x="[\d.]+" y="\d+" width="([\d.]+)"/g)].map((m) => Number(m[1]));
  assert.equal(widths.length, 2);
  assert.ok(Math.abs(widths[0]! / widths[1]! - 2) < 0.01, `widths ${widths.join(', ')}`);
  assert.equal(escapeXml('<&>'), '&lt;&amp;&gt;');
});

test('random offsets are deterministic, block-aligned and inside the file', () => {
  const a = randomOffsets(1024 * MIB, 4096, 500, 42);
  assert.deepEqual(a, randomOffsets(1024 * MIB, 4096, 500, 42));
  assert.notDeepEqual(a, randomOffsets(1024 * MIB, 4096, 500, 43));
  for (const off of a) {
    assert.equal(off % 4096, 0);
    assert.ok(off >= 0 && off + 4096 <= 1024 * MIB);
  }
  assert.ok(new Set(a).size > 490, 'offsets spread over the file');
  assert.throws(() => randomOffsets(100, 4096, 1, 1), /smaller than one/);
});

// Renders a cold-start benchmark result as a Markdown report with hand-written SVG bar charts: the issue's
// targets checked against the medians, the machine and the exact command, the images, and per scenario a
// chart (time to ready + workload per mode, or read throughput per mode) and a table of every measure.
import type { ColdStartResult, MedianMeasure, ModeName, ModeSummary, ScenarioResult } from './types.js';

export interface RenderedReport {
  markdown: string;
  svgs: Array<{ name: string; content: string }>;
}

/** The issue's targets (figures for the closing note, not tests). */
export const TARGETS = {
  lazyColdTimeVsFullPull: 0.25,
  lazyColdFractionFetched: 0.15,
  prefetchTimeVsFullPull: 0.15,
  warmVsLocalThroughput: 0.9,
  coldSequentialMBps: 300,
  peakRssBeyondCacheBytes: 200 * 1024 * 1024,
} as const;

const SVG_WIDTH = 820;
const LABEL_WIDTH = 170;
const VALUE_WIDTH = 200;
const ROW_HEIGHT = 26;
const BAR_HEIGHT = 16;
const TOP = 34;
const COLOURS = { ready: '#31688e', work: '#8fd175', throughput: '#443983', axis: '#888', text: '#222' } as const;

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

export interface BarRow {
  label: string;
  /** Stacked segments, left to right. */
  segments: Array<{ value: number; colour: string; title: string }>;
  /** Text right of the bar. */
  note: string;
}

/** A horizontal bar chart with stacked segments, one row per bar; the scale is the largest row total. */
export function barChartSvg(title: string, rows: BarRow[], legend: Array<{ colour: string; text: string }>): string {
  const height = TOP + rows.length * ROW_HEIGHT + 30;
  const plotWidth = SVG_WIDTH - LABEL_WIDTH - VALUE_WIDTH - 10;
  const max = Math.max(1e-9, ...rows.map((r) => r.segments.reduce((s, x) => s + x.value, 0)));
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${SVG_WIDTH}" height="${height}" viewBox="0 0 ${SVG_WIDTH} ${height}" font-family="sans-serif" font-size="12">`,
    `<rect width="100%" height="100%" fill="#fff"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold" fill="${COLOURS.text}">${escapeXml(title)}</text>`,
  ];
  rows.forEach((row, i) => {
    const y = TOP + i * ROW_HEIGHT;
    out.push(`<text x="${LABEL_WIDTH - 8}" y="${y + BAR_HEIGHT - 3}" text-anchor="end" fill="${COLOURS.text}">${escapeXml(row.label)}</text>`);
    let x = LABEL_WIDTH;
    for (const seg of row.segments) {
      const w = (seg.value / max) * plotWidth;
      out.push(`<rect x="${x.toFixed(1)}" y="${y}" width="${Math.max(0, w).toFixed(1)}" height="${BAR_HEIGHT}" fill="${seg.colour}"><title>${escapeXml(seg.title)}</title></rect>`);
      x += w;
    }
    out.push(`<text x="${(x + 6).toFixed(1)}" y="${y + BAR_HEIGHT - 3}" fill="${COLOURS.text}">${escapeXml(row.note)}</text>`);
  });
  const axisY = TOP + rows.length * ROW_HEIGHT;
  out.push(`<line x1="${LABEL_WIDTH}" y1="${TOP - 4}" x2="${LABEL_WIDTH}" y2="${axisY}" stroke="${COLOURS.axis}"/>`);
  let lx = LABEL_WIDTH;
  for (const l of legend) {
    out.push(`<rect x="${lx}" y="${axisY + 10}" width="12" height="12" fill="${l.colour}"/>`);
    out.push(`<text x="${lx + 16}" y="${axisY + 20}" fill="${COLOURS.text}">${escapeXml(l.text)}</text>`);
    lx += 24 + l.text.length * 7;
  }
  out.push('</svg>');
  return `${out.join('\n')}\n`;
}

const s = (ms: number | null | undefined) => (ms == null ? '–' : (ms / 1000).toFixed(2));
const pct = (x: number | null | undefined) => (x == null ? '–' : `${(x * 100).toFixed(1)}%`);
const mb = (b: number | null | undefined) => (b == null ? '–' : (b / 1e6).toFixed(1));
const mib = (b: number | null | undefined) => (b == null ? '–' : (b / 1024 / 1024).toFixed(0));
const num = (x: number | null | undefined, digits = 0) => (x == null ? '–' : x.toFixed(digits));
/** MB/s with enough digits for slow random reads. */
const rate = (x: number | null | undefined) => (x == null ? '–' : x.toFixed(x < 10 ? 2 : x < 100 ? 1 : 0));

function isRead(sc: ScenarioResult): boolean {
  return sc.modes.some((m) => m.median?.throughputMBps != null);
}

/** Full pulls read files they have just written: from the page cache, so their read throughput is not charted. */
const PAGE_CACHE_MODES: ReadonlySet<ModeName> = new Set<ModeName>(['full-pull', 'full-pull-erofs']);

function throughputChart(sc: ScenarioResult): string {
  const ran = sc.modes.filter((m) => m.median && !PAGE_CACHE_MODES.has(m.mode));
  const rows: BarRow[] = ran.map((m) => ({
    label: m.mode,
    segments: [{ value: m.median!.throughputMBps ?? 0, colour: COLOURS.throughput, title: `${rate(m.median!.throughputMBps)} MB/s` }],
    note: `${rate(m.median!.throughputMBps)} MB/s${m.ratios?.throughputVsLocal != null ? ` (${pct(m.ratios.throughputVsLocal)} of local)` : ''}`,
  }));
  return barChartSvg(`${sc.id}: ${sc.workload}, read throughput (median, MB/s)`, rows, [{ colour: COLOURS.throughput, text: 'MB/s during the workload (full pulls: see the table)' }]);
}

function timeChart(sc: ScenarioResult): string {
  const rows: BarRow[] = sc.modes.filter((m) => m.median).map((m) => ({
    label: m.mode,
    segments: [
      { value: (m.median!.readyMs ?? 0) / 1000, colour: COLOURS.ready, title: `ready ${s(m.median!.readyMs)} s` },
      { value: (m.median!.workloadMs ?? 0) / 1000, colour: COLOURS.work, title: `workload ${s(m.median!.workloadMs)} s` },
    ],
    note: `${s(m.median!.doneMs)} s${m.ratios?.doneVsFullPull != null ? ` (${pct(m.ratios.doneVsFullPull)})` : ''}`,
  }));
  return barChartSvg(`${sc.id}: ${sc.workload}, time to workload done (median, s; % of full pull)`, rows, [
    { colour: COLOURS.ready, text: 'pull/mount until ready' },
    { colour: COLOURS.work, text: 'workload' },
  ]);
}

function scenarioTable(sc: ScenarioResult): string {
  const read = isRead(sc);
  const head = ['mode', 'ready s', 'workload s', 'done s', 'done vs full pull', 'fetched MB', 'fetched / image', 'bytes vs full pull', 'requests', 'peak RSS MiB', ...(read ? ['MB/s', 'vs local'] : []), 'runs'];
  const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => '---').join('|')}|`];
  for (const m of sc.modes) {
    if (!m.median) continue;
    const md: MedianMeasure = m.median;
    lines.push(
      `| ${[
        m.mode,
        s(md.readyMs),
        s(md.workloadMs),
        s(md.doneMs),
        pct(m.ratios?.doneVsFullPull),
        mb(md.bytesFetched),
        pct(md.fractionFetched),
        pct(m.ratios?.bytesVsFullPull),
        num(md.requests),
        mib(md.peakRssBytes),
        ...(read ? [rate(md.throughputMBps), pct(m.ratios?.throughputVsLocal)] : []),
        `${m.runs.length}${m.failures?.length ? ` (${m.failures.length} failed)` : ''}`,
      ].join(' | ')} |`,
    );
  }
  const skipped = sc.modes.filter((m) => !m.median);
  if (skipped.length > 0) {
    lines.push('');
    for (const m of skipped) lines.push(`- ${m.mode} not measured: ${m.skipped ?? 'no run'}`);
  }
  const failed = sc.modes.filter((m) => m.median && m.failures?.length);
  for (const m of failed) lines.push(`- ${m.mode}: ${m.failures!.length} run(s) failed, first: ${m.failures![0]}`);
  return lines.join('\n');
}

interface TargetCheck {
  target: string;
  measured: string;
  met: boolean | null;
}

function findMode(r: ColdStartResult, image: string, link: string, mode: ModeName, workload?: string): ModeSummary | undefined {
  return r.scenarios.find((sc) => sc.image === image && sc.link === link && (!workload || sc.workload === workload))?.modes.find((m) => m.mode === mode);
}

export function checkTargets(r: ColdStartResult): TargetCheck[] {
  const checks: TargetCheck[] = [];
  const cold = findMode(r, 'debian-python', 'emulated', 'lazy-cold');
  checks.push({
    target: `Debian+python3, emulated link: lazy cold ≤ ${pct(TARGETS.lazyColdTimeVsFullPull)} of the full-pull time`,
    measured: cold?.ratios ? `${pct(cold.ratios.doneVsFullPull)} (${s(cold.median?.doneMs)} s)` : 'not measured',
    met: cold?.ratios?.doneVsFullPull == null ? null : cold.ratios.doneVsFullPull <= TARGETS.lazyColdTimeVsFullPull,
  });
  checks.push({
    target: `Debian+python3, emulated link: lazy cold fetches ≤ ${pct(TARGETS.lazyColdFractionFetched)} of the image bytes`,
    measured: cold?.median ? `${pct(cold.median.fractionFetched)} of the seekable image (${mb(cold.median.bytesFetched)} MB)` : 'not measured',
    met: cold?.median?.fractionFetched == null ? null : cold.median.fractionFetched <= TARGETS.lazyColdFractionFetched,
  });
  const pre = findMode(r, 'debian-python', 'emulated', 'lazy-prefetch');
  checks.push({
    target: `Debian+python3, emulated link: with a recorded profile ≤ ${pct(TARGETS.prefetchTimeVsFullPull)} of the full-pull time`,
    measured: pre?.ratios ? `${pct(pre.ratios.doneVsFullPull)} (${s(pre.median?.doneMs)} s)` : `not measured${pre?.skipped ? `: ${pre.skipped}` : ''}`,
    met: pre?.ratios?.doneVsFullPull == null ? null : pre.ratios.doneVsFullPull <= TARGETS.prefetchTimeVsFullPull,
  });
  const bigImage = r.scenarios.find((sc) => sc.workload === 'sequential')?.image ?? '';
  const warm = findMode(r, bigImage, 'loopback', 'lazy-warm', 'sequential');
  checks.push({
    target: `Large file, warm disk cache: ≥ ${pct(TARGETS.warmVsLocalThroughput)} of the local loop mount's sequential throughput`,
    measured: warm?.ratios ? `${pct(warm.ratios.throughputVsLocal)} (${rate(warm.median?.throughputMBps)} MB/s)` : 'not measured',
    met: warm?.ratios?.throughputVsLocal == null ? null : warm.ratios.throughputVsLocal >= TARGETS.warmVsLocalThroughput,
  });
  const coldSeq = findMode(r, bigImage, 'loopback', 'lazy-cold', 'sequential');
  checks.push({
    target: `Large file, cold, loopback: ≥ ${TARGETS.coldSequentialMBps} MB/s sequential`,
    measured: coldSeq?.median ? `${rate(coldSeq.median.throughputMBps)} MB/s` : 'not measured',
    met: coldSeq?.median?.throughputMBps == null ? null : coldSeq.median.throughputMBps >= TARGETS.coldSequentialMBps,
  });
  let worst: { beyond: number; where: string } | undefined;
  for (const sc of r.scenarios) {
    for (const m of sc.modes) {
      for (const run of m.runs) {
        if (run.peakRssBytes == null) continue;
        const beyond = run.peakRssBytes - (run.memoryCacheBytes ?? 0);
        if (!worst || beyond > worst.beyond) worst = { beyond, where: `${sc.id}, ${m.mode}: ${mib(run.peakRssBytes)} MiB peak, cache ${mib(run.memoryCacheBytes)} MiB` };
      }
    }
  }
  checks.push({
    target: `Serving process peak memory < ${mib(TARGETS.peakRssBeyondCacheBytes)} MiB beyond the memory cache bound`,
    measured: worst ? `worst ${mib(worst.beyond)} MiB beyond (${worst.where})` : 'not measured',
    met: worst ? worst.beyond < TARGETS.peakRssBeyondCacheBytes : null,
  });
  return checks;
}

export function renderReport(r: ColdStartResult, stem: string): RenderedReport {
  const svgs: RenderedReport['svgs'] = [];
  const md: string[] = [];
  md.push(`# erofs-lazy cold-start benchmark, ${r.date}${r.quick ? ' (quick smoke run)' : ''}`, '');
  md.push(`Command: \`${r.command}\``, '');
  md.push('| machine | |', '|---|---|');
  md.push(`| CPU | ${r.machine.cpuModel}, ${r.machine.cores} cores |`);
  md.push(`| memory | ${r.machine.memoryGiB} GiB |`);
  md.push(`| kernel / OS | ${r.machine.kernel} / ${r.machine.os} |`);
  md.push(`| disk | ${r.machine.disk} |`);
  md.push(`| node | ${r.machine.node} |`);
  md.push(`| load average (1, 5, 15 min) | start ${r.loadAverage.start.join(', ')}; end ${r.loadAverage.end.join(', ')} |`);
  md.push(`| duration | ${(r.durationSeconds / 60).toFixed(1)} min, ${r.settings.runs} run(s) per mode, medians reported |`, '');
  md.push('Links: ' + r.settings.links.map((l) => `**${l.name}** (${l.viaProxy ? `throttling proxy, ${l.rttMs} ms per request, ${l.mbitPerSecond ?? 'unlimited'} Mbit/s shared` : 'direct to the registry on 127.0.0.1'})`).join('; ') + '.', '');
  md.push(
    'Every run starts cold: page cache dropped, empty cache dirs, nothing of the image on local disk (except `local`, the pre-pulled raw EROFS image, and `lazy-warm`, which reuses the disk cache of the cold run just before it). ' +
      (r.settings.programsWarm
        ? 'After the drop, the programs a mode starts (node with erofs-lazy\'s modules, `ctr`) are read back into the page cache, as on a host that runs them regularly: the full pull runs inside the already running bench process, and containerd is a resident daemon. The registry\'s blob files stay cold. '
        : '') +
      '*ready* is from the cold start until the tree is mounted; *done* adds the workload. Bytes and requests come from the proxy on a proxied link (every request, manifests included), otherwise from the puller (full pull) or `erofs-lazy stats` (lazy modes). *fetched / image* is over the blob sizes of the image variant the mode pulls (tar+gzip for full pull and containerd overlayfs, seekable EROFS otherwise). Peak RSS is the VmHWM of the serving process (erofs-lazy mount or serve). Medians are taken per measure, so a row\'s ready and workload medians need not add up to its done median.',
    '',
  );
  md.push('## Targets (issue 6)', '', '| target | measured (median) | met |', '|---|---|---|');
  for (const c of checkTargets(r)) md.push(`| ${c.target} | ${c.measured} | ${c.met === null ? '–' : c.met ? 'yes' : '**no**'} |`);
  md.push('', '## Images', '', '| image | layers | tree MB | tar+gzip MB | seekable EROFS MB | raw EROFS MB | chunk size | layout |', '|---|---|---|---|---|---|---|---|');
  for (const img of r.images) {
    md.push(`| ${img.name}: ${img.description} | ${img.layers} | ${mb(img.treeBytes)} | ${mb(img.plainBytes)} | ${mb(img.seekableBytes)} | ${mb(img.rawBytes)} | ${img.chunkSize} | ${img.layout === 'startup' ? `start-up first (${img.hotPaths ?? '?'} paths)` : 'mkfs.erofs'} |`);
  }
  md.push('', '## Modes', '');
  for (const m of r.settings.modes) md.push(`- \`${m}\`: ${r.scenarios[0]?.modes.find((x) => x.mode === m)?.label ?? m}`);
  r.scenarios.forEach((sc, i) => {
    const stemOf = (kind: string) => `${stem}-${i + 1}-${sc.image}-${sc.workload}-${sc.link}-${kind}.svg`.replace(/[^A-Za-z0-9._-]/g, '_');
    const charts: Array<{ name: string; content: string }> = [];
    if (sc.modes.some((m) => m.median)) {
      charts.push({ name: stemOf('time'), content: timeChart(sc) });
      if (isRead(sc)) charts.push({ name: stemOf('throughput'), content: throughputChart(sc) });
    }
    svgs.push(...charts);
    const load = sc.loadAverage ? ` Load average at its start: ${sc.loadAverage.join(', ')}.` : '';
    md.push('', `## ${sc.id}: ${sc.workload}`, '', `Workload: ${sc.workloadDescription}.${load}`, '');
    for (const c of charts) md.push(`![${sc.id}](${c.name})`, '');
    md.push(scenarioTable(sc));
    if (isRead(sc)) md.push('', 'The full pulls read a file they have just written, mostly from the page cache: their cost is in *ready*.');
  });
  if (r.notes.length > 0) {
    md.push('', '## Notes', '');
    for (const n of r.notes) md.push(`- ${n}`);
  }
  md.push('');
  return { markdown: md.join('\n'), svgs };
}

// Result types of the cold-start benchmark (the JSON written under docs/bench/), shared by the runner and
// the report renderer, and the medians/ratios computed from the runs.
import type { MachineInfo } from './system.js';

export const MODE_NAMES = [
  'full-pull',
  'full-pull-erofs',
  'local',
  'lazy-cold',
  'lazy-warm',
  'lazy-prefetch',
  'lazy-paths',
  'containerd-overlayfs',
  'containerd-lazy',
] as const;
export type ModeName = (typeof MODE_NAMES)[number];

export const MODE_LABELS: Record<ModeName, string> = {
  'full-pull': 'full pull (tar+gzip: download, verify, untar, mount)',
  'full-pull-erofs': 'full pull (seekable EROFS: download, decode, loop mount)',
  local: 'local (raw EROFS on local disk, loop mount; no network)',
  'lazy-cold': 'erofs-lazy mount, cold caches, default options (a start-up layout prefetches its start-up region)',
  'lazy-warm': 'erofs-lazy mount, warm disk cache, default options',
  'lazy-prefetch': 'erofs-lazy mount, cold, prefetch from a recorded profile',
  'lazy-paths': 'erofs-lazy mount, cold, prefetch by path (--prefetch-path)',
  'containerd-overlayfs': 'containerd: ctr pull + ctr run (overlayfs)',
  'containerd-lazy': 'containerd: erofs-lazy serve + rpull + ctr run',
};

/** The mode every ratio is taken against. */
export const BASELINE_MODE: ModeName = 'full-pull';

export interface LinkProfile {
  name: string;
  /** Delay added to each registry request; 0 for none. */
  rttMs: number;
  /** Shared bandwidth of registry responses in Mbit/s; null for unlimited. */
  mbitPerSecond: number | null;
  /** Direct to the registry (no proxy) or through the throttling proxy. */
  viaProxy: boolean;
}

export interface RunMeasure {
  /** From the cold start to the image tree ready to use (pulled and mounted, or lazily mounted). */
  readyMs: number;
  /** The workload alone. */
  workloadMs: number;
  /** readyMs + workloadMs: the cold start as a user sees it. */
  doneMs: number;
  /** Bytes fetched from the registry (response bodies), null when not known. */
  bytesFetched: number | null;
  requests: number | null;
  /** bytesFetched over the size of the image variant the mode pulls. */
  fractionFetched: number | null;
  /** Where the byte and request counts come from. */
  countsFrom: 'proxy' | 'client' | 'mount-stats' | 'none';
  /** VmHWM of the process serving the mount (erofs-lazy modes), null otherwise. */
  peakRssBytes: number | null;
  /** The memory cache bound of that process. */
  memoryCacheBytes: number | null;
  /** Read workloads: bytes read over workload time (10^6 bytes per second). */
  throughputMBps?: number;
}

export type MedianMeasure = { [K in keyof RunMeasure]: RunMeasure[K] extends string ? RunMeasure[K] : number | null };

export interface ModeSummary {
  mode: ModeName;
  label: string;
  /** Why the mode did not run, if it did not. */
  skipped?: string;
  runs: RunMeasure[];
  /** Errors of runs that failed (the mode's other runs still count). */
  failures?: string[];
  median?: MedianMeasure;
  ratios?: {
    /** doneMs over the full pull's, in the same bench run. */
    doneVsFullPull: number | null;
    bytesVsFullPull: number | null;
    /** Read workloads: throughput over the local loop mount's. */
    throughputVsLocal: number | null;
  };
}

export interface ScenarioResult {
  /** e.g. debian-python/python-import on emulated. */
  id: string;
  image: string;
  workload: string;
  workloadDescription: string;
  link: string;
  /** Load average (1, 5, 15 min) when the scenario started: the machine may be shared. */
  loadAverage?: number[];
  modes: ModeSummary[];
}

export interface ImageSummary {
  name: string;
  description: string;
  layers: number;
  treeBytes: number;
  plainBytes: number;
  seekableBytes: number;
  rawBytes: number;
  chunkSize: number | 'default';
  /** 'mkfs' (absent in older results) or 'startup' (the workload's paths first, with how many). */
  layout?: string;
  hotPaths?: number;
}

export interface ColdStartResult {
  kind: 'erofs-lazy-coldstart-bench';
  version: 1;
  date: string;
  /** The exact command line. */
  command: string;
  quick: boolean;
  machine: MachineInfo;
  loadAverage: { start: number[]; end: number[] };
  durationSeconds: number;
  settings: {
    runs: number;
    links: LinkProfile[];
    modes: ModeName[];
    workDir: string;
    /** Whether the programs (node, erofs-lazy's modules, ctr) were read back into the page cache after each drop (absent in older results: they were not). */
    programsWarm?: boolean;
  };
  images: ImageSummary[];
  scenarios: ScenarioResult[];
  notes: string[];
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Per-field medians of the runs (a field null in any run is null). */
export function medianOf(runs: RunMeasure[]): MedianMeasure {
  const first = runs[0]!;
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(first) as Array<keyof RunMeasure>) {
    if (key === 'countsFrom') {
      out[key] = first.countsFrom;
      continue;
    }
    const values = runs.map((r) => r[key]);
    out[key] = values.every((v) => typeof v === 'number') ? median(values as number[]) : null;
  }
  return out as MedianMeasure;
}

/** Fills medians and the ratios against the full pull (and the local loop mount for throughput). */
export function summarizeModes(modes: ModeSummary[]): void {
  for (const m of modes) if (m.runs.length > 0) m.median = medianOf(m.runs);
  const base = modes.find((m) => m.mode === BASELINE_MODE)?.median;
  const local = modes.find((m) => m.mode === 'local')?.median;
  const ratio = (a: number | null | undefined, b: number | null | undefined) => (a == null || b == null || b === 0 ? null : a / b);
  for (const m of modes) {
    if (!m.median) continue;
    m.ratios = {
      doneVsFullPull: ratio(m.median.doneMs, base?.doneMs),
      bytesVsFullPull: ratio(m.median.bytesFetched, base?.bytesFetched),
      throughputVsLocal: ratio(m.median.throughputMBps, local?.throughputMBps),
    };
  }
}

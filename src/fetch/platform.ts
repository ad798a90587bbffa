// Platforms: the host's linux platform in OCI names, "os/arch[/variant]" strings, and choosing one manifest
// from an image index the way containerd does (exact variant first, then older compatible variants).
import type { Descriptor, Platform } from '../oci/types.js';
import { PlatformError } from './errors.js';

/** OS of the images this tool runs, whatever node reports. */
export const HOST_OS = 'linux';
/** Variant assumed for a 32-bit arm host whose node build does not say. */
const DEFAULT_ARM_VARIANT = 'v7';

/** node's process.arch → OCI architecture (and variant). */
const NODE_ARCH_TO_OCI: Readonly<Record<string, { architecture: string; variant?: string }>> = {
  x64: { architecture: 'amd64' },
  arm64: { architecture: 'arm64', variant: 'v8' },
  arm: { architecture: 'arm', variant: DEFAULT_ARM_VARIANT },
  ia32: { architecture: '386' },
  ppc64: { architecture: 'ppc64le' },
  s390x: { architecture: 's390x' },
  riscv64: { architecture: 'riscv64' },
  loong64: { architecture: 'loong64' },
  mips: { architecture: 'mips' },
  mipsel: { architecture: 'mipsle' },
};

/** Other spellings of architectures (uname, Debian) → OCI names, with the variant they imply. */
const ARCH_ALIASES: Readonly<Record<string, { architecture: string; variant?: string }>> = {
  x86_64: { architecture: 'amd64' },
  'x86-64': { architecture: 'amd64' },
  aarch64: { architecture: 'arm64' },
  armhf: { architecture: 'arm', variant: 'v7' },
  armel: { architecture: 'arm', variant: 'v6' },
  i386: { architecture: '386' },
  i686: { architecture: '386' },
};

/** Known operating systems, to read a single-component platform string as an OS rather than an arch. */
const KNOWN_OS: ReadonlySet<string> = new Set(['linux', 'windows', 'darwin', 'freebsd', 'netbsd', 'openbsd', 'solaris', 'illumos', 'aix', 'android', 'ios', 'plan9', 'js', 'wasip1']);

/**
 * Variant assumed when a platform has none, per architecture (containerd's normalization):
 * arm64 means v8, arm means v7, amd64 means v1.
 */
const IMPLIED_VARIANT: Readonly<Record<string, string>> = { arm64: 'v8', arm: 'v7', amd64: 'v1' };
/** Rank of a match through an implied variant (arm64 vs arm64/v8): after an exact one, before older levels. */
const IMPLIED_VARIANT_RANK = 0.5;
/** Architectures whose variants are ordered levels: a host at one level runs images built for lower ones. */
const ORDERED_VARIANT_ARCHES: ReadonlySet<string> = new Set(['arm', 'arm64', 'amd64']);

/** The platform of this host, as linux images name it. */
export function hostPlatform(arch: string = process.arch): Platform {
  const mapped = NODE_ARCH_TO_OCI[arch] ?? { architecture: arch };
  let variant = mapped.variant;
  if (arch === 'arm') {
    const armVersion = (process.config.variables as Record<string, unknown>)['arm_version'];
    if (typeof armVersion === 'string' && /^[5-8]$/.test(armVersion)) variant = `v${armVersion}`;
  }
  return variant === undefined ? { os: HOST_OS, architecture: mapped.architecture } : { os: HOST_OS, architecture: mapped.architecture, variant };
}

function normalizeVariant(variant: string): string {
  const lower = variant.toLowerCase();
  return /^[0-9]/.test(lower) ? `v${lower}` : lower;
}

/** OCI spelling of a platform: aliases resolved ("aarch64" → "arm64", "armhf" → arm/v7), variant "8" → "v8". */
export function normalizePlatform(platform: Platform): Platform {
  const os = platform.os.toLowerCase();
  const archLower = platform.architecture.toLowerCase();
  const alias = ARCH_ALIASES[archLower];
  const architecture = alias?.architecture ?? archLower;
  const rawVariant = platform.variant !== undefined && platform.variant !== '' ? platform.variant : alias?.variant;
  const result: Platform = { os, architecture };
  if (rawVariant !== undefined) result.variant = normalizeVariant(rawVariant);
  if (platform['os.version'] !== undefined) result['os.version'] = platform['os.version'];
  if (platform['os.features'] !== undefined) result['os.features'] = platform['os.features'];
  return result;
}

/**
 * Parses "os/arch[/variant]" ("linux/arm64/v8", "linux/amd64"). A single component is an OS (with the
 * host's architecture) when it names one, otherwise an architecture on linux ("arm64").
 */
export function parsePlatform(text: string): Platform {
  const parts = text.trim().split('/');
  if (parts.length > 3 || parts.some((part) => !/^[A-Za-z0-9_.-]+$/.test(part))) {
    throw new PlatformError(`invalid platform ${JSON.stringify(text.slice(0, 100))}: want os/arch[/variant], e.g. linux/arm64/v8`);
  }
  if (parts.length === 1) {
    const only = parts[0]!.toLowerCase();
    if (KNOWN_OS.has(only)) return normalizePlatform({ ...hostPlatform(), os: only });
    return normalizePlatform({ os: HOST_OS, architecture: only });
  }
  const platform: Platform = { os: parts[0]!, architecture: parts[1]! };
  if (parts[2] !== undefined) platform.variant = parts[2];
  return normalizePlatform(platform);
}

/** "os/arch[/variant]". */
export function formatPlatform(platform: Platform): string {
  return [platform.os, platform.architecture, platform.variant].filter((part) => part !== undefined && part !== '').join('/');
}

/** [major, minor] of "v8", "v8.2", "v9"; undefined for other spellings. */
function variantLevel(variant: string): [number, number] | undefined {
  const m = /^v([0-9]+)(?:\.([0-9]+))?$/.exec(variant);
  return m ? [Number(m[1]), Number(m[2] ?? 0)] : undefined;
}

/**
 * How well an image platform `have` suits a host that wants `want`: 0 for an exact match, 0.5 when equal only
 * through an implied variant (arm64 and arm64/v8), a larger number
 * for an older variant the host can still run (arm/v7 runs v6 and v5; arm64/v8.2 runs v8), undefined when
 * it cannot run at all. A missing variant counts as the architecture's base one (arm64 → v8).
 */
export function platformMatchRank(want: Platform, have: Platform): number | undefined {
  const w = normalizePlatform(want);
  const h = normalizePlatform(have);
  if (w.os !== h.os || w.architecture !== h.architecture) return undefined;
  const implied = IMPLIED_VARIANT[w.architecture];
  if (w.variant === h.variant) return 0;
  const wantVariant = w.variant ?? implied;
  const haveVariant = h.variant ?? implied;
  if (wantVariant === haveVariant) return IMPLIED_VARIANT_RANK;
  if (wantVariant === undefined || haveVariant === undefined || !ORDERED_VARIANT_ARCHES.has(w.architecture)) return undefined;
  const wantLevel = variantLevel(wantVariant);
  const haveLevel = variantLevel(haveVariant);
  if (!wantLevel || !haveLevel) return undefined;
  const distance = (wantLevel[0] - haveLevel[0]) * 100 + (wantLevel[1] - haveLevel[1]);
  return distance > 0 ? distance : undefined;
}

/**
 * Picks the manifest for `want` from an index's entries: the best rank wins, the first on ties. An index
 * holding exactly one entry without a platform yields that entry. Throws PlatformError listing the
 * platforms on offer when nothing fits.
 */
export function selectManifest(manifests: readonly Descriptor[], want: Platform, context = 'image index'): Descriptor {
  let best: Descriptor | undefined;
  let bestRank = Number.POSITIVE_INFINITY;
  for (const entry of manifests) {
    if (!entry.platform) continue;
    const rank = platformMatchRank(want, entry.platform);
    if (rank !== undefined && rank < bestRank) {
      best = entry;
      bestRank = rank;
    }
  }
  if (best) return best;
  if (manifests.length === 1 && !manifests[0]!.platform) return manifests[0]!;
  const available = manifests.map((entry) => (entry.platform ? formatPlatform(entry.platform) : `${entry.digest} (no platform)`));
  throw new PlatformError(
    `no manifest for platform ${formatPlatform(normalizePlatform(want))} in ${context}; available: ${available.length ? available.join(', ') : 'none'}`,
  );
}

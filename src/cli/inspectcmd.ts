// What `erofs-lazy inspect REF` does (its options are in inspect.ts): the manifest, each layer's media type,
// size and annotations, and for seekable layers a summary of the chunk table, fetched by Range (never the
// whole blob).
import { loadChunkTable, parseSeekableAnnotations } from '../chunktable/index.js';
import { openImageStore } from '../fetch/index.js';
import type { ImageStore } from '../oci/store.js';
import { MEDIA_TYPE } from '../oci/types.js';
import type { Descriptor, Platform } from '../oci/types.js';
import type { ImageAccessArgs } from './common.js';
import { imageStoreOptions, platformOption } from './imageargs.js';
import { formatBytes, oneLineError, printJson } from './output.js';

export interface ChunkTableSummary {
  uncompressedSize: number;
  chunkSize: number;
  chunkCount: number;
  /** Blob size over uncompressed size. */
  compressionRatio: number;
  tableDigestVerified: boolean;
  dmVerity: boolean;
}

export interface LayerReport {
  digest: string;
  mediaType: string;
  size: number;
  annotations: Record<string, string>;
  seekable: boolean;
  /** Why a layer is not seekable (not an error). */
  notSeekableReason?: string;
  chunkTable?: ChunkTableSummary;
  /** A seekable layer whose chunk table is malformed or does not verify. */
  error?: string;
}

export interface InspectReport {
  reference: string;
  manifestDigest: string;
  manifestMediaType: string;
  config: Descriptor;
  layers: LayerReport[];
  /** Blob bytes fetched for this report (chunk tables only). */
  bytesFetched: number;
}

export async function inspectImage(store: ImageStore, platform?: Platform): Promise<InspectReport> {
  const resolved = await store.resolve({ platform });
  let bytesFetched = 0;
  const layers: LayerReport[] = [];
  for (const layer of resolved.manifest.layers) {
    const report: LayerReport = {
      digest: layer.digest,
      mediaType: layer.mediaType,
      size: layer.size,
      annotations: layer.annotations ?? {},
      seekable: false,
    };
    layers.push(report);
    if (layer.mediaType !== MEDIA_TYPE.erofsZstd) {
      report.notSeekableReason = `media type ${layer.mediaType}`;
      continue;
    }
    try {
      const verdict = parseSeekableAnnotations(layer);
      if (verdict.kind !== 'seekable') {
        report.notSeekableReason = verdict.reason;
        continue;
      }
      const table = await loadChunkTable(layer, async (start, end) => {
        bytesFetched += end - start;
        return store.fetchRange(layer, start, end);
      });
      report.seekable = true;
      report.chunkTable = {
        uncompressedSize: table.uncompressedSize,
        chunkSize: table.chunkSize,
        chunkCount: table.chunkCount,
        compressionRatio: table.uncompressedSize === 0 ? 0 : layer.size / table.uncompressedSize,
        tableDigestVerified: true,
        dmVerity: verdict.verity !== undefined,
      };
    } catch (err) {
      report.error = oneLineError(err);
    }
  }
  return {
    reference: store.displayName,
    manifestDigest: resolved.descriptor.digest,
    manifestMediaType: resolved.descriptor.mediaType,
    config: resolved.manifest.config,
    layers,
    bytesFetched,
  };
}

function printReport(r: InspectReport): void {
  const out: string[] = [];
  out.push(`${r.reference}`);
  out.push(`manifest  ${r.manifestDigest} (${r.manifestMediaType})`);
  out.push(`config    ${r.config.digest} (${formatBytes(r.config.size)})`);
  r.layers.forEach((l, i) => {
    out.push(`layer ${i}  ${l.digest}`);
    out.push(`  media type  ${l.mediaType}`);
    out.push(`  size        ${formatBytes(l.size)} (${l.size} bytes)`);
    for (const [k, v] of Object.entries(l.annotations).sort()) out.push(`  annotation  ${k}=${v}`);
    if (l.error) out.push(`  ERROR       ${l.error}`);
    else if (!l.seekable) out.push(`  seekable    no (${l.notSeekableReason})`);
    else if (l.chunkTable) {
      const t = l.chunkTable;
      out.push(`  seekable    yes, chunk table digest verified`);
      out.push(`  EROFS size  ${formatBytes(t.uncompressedSize)} (${t.uncompressedSize} bytes)`);
      out.push(`  chunks      ${t.chunkCount} of ${formatBytes(t.chunkSize)}`);
      out.push(`  ratio       ${(t.compressionRatio * 100).toFixed(1)}% of the raw image`);
      out.push(`  dm-verity   ${t.dmVerity ? 'yes' : 'no'}`);
    }
  });
  out.push(`fetched ${r.bytesFetched} bytes of layer blobs (chunk tables only)`);
  process.stdout.write(`${out.join('\n')}\n`);
}

export async function runInspect(args: ImageAccessArgs & { reference: string; json: boolean }): Promise<void> {
  const platform = platformOption(args.platform);
  const store = openImageStore(args.reference, imageStoreOptions(args));
  try {
    const report = await inspectImage(store, platform);
    if (args.json) printJson(report);
    else printReport(report);
    const failed = report.layers.filter((l) => l.error);
    if (failed.length > 0) {
      throw new Error(`${failed.length} seekable layer(s) failed verification: ${failed[0]!.digest}: ${failed[0]!.error}`);
    }
  } finally {
    await store.close();
  }
}

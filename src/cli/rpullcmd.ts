// What `erofs-lazy rpull` does (its options are in rpull.ts): unpacks an image into containerd with
// remote snapshots for its seekable layers, printing a line per layer and a summary (or a JSON report).
import { ContainerdClient, rpullImage } from '../containerd/index.js';
import type { LayerResult, RpullReport } from '../containerd/index.js';
import { openImageStore } from '../fetch/index.js';
import type { ImageAccessArgs } from './common.js';
import { imageStoreOptions, platformOption } from './imageargs.js';
import { formatBytes, printJson } from './output.js';

export interface RpullArgs extends ImageAccessArgs {
  reference: string;
  address: string;
  namespace: string;
  snapshotter: string;
  json: boolean;
}

function layerLine(l: LayerResult): string {
  return `layer ${l.index} ${l.digest} ${l.state} (${formatBytes(l.size)}, chain ${l.chainId})`;
}

function summary(r: RpullReport): string {
  const count = (s: LayerResult['state']): number => r.layers.filter((l) => l.state === s).length;
  return (
    `rpulled ${r.reference} into snapshotter ${r.snapshotter}: ${r.layers.length} layers ` +
    `(${count('remote')} remote, ${count('applied')} applied, ${count('present')} present), ` +
    `${formatBytes(r.layerBytesDownloaded)} of layers downloaded, image ${r.target.digest}`
  );
}

export async function runRpull(args: RpullArgs): Promise<void> {
  const client = ContainerdClient.connect(args.address, { namespace: args.namespace });
  const store = openImageStore(args.reference, imageStoreOptions(args));
  try {
    const report = await rpullImage(store, client, {
      reference: args.reference,
      snapshotter: args.snapshotter,
      platform: platformOption(args.platform),
      onLayer: args.json ? undefined : (l) => process.stdout.write(`${layerLine(l)}\n`),
    });
    if (args.json) printJson(report);
    else process.stdout.write(`${summary(report)}\n`);
  } finally {
    client.close();
    await store.close();
  }
}

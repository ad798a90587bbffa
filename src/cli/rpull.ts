// `erofs-lazy rpull REF --address CONTAINERD_SOCKET`: makes an image known to containerd (content,
// snapshots, image record) without downloading its seekable layers: the snapshotter (erofs-lazy serve)
// mounts them lazily as remote snapshots, so that `ctr run --snapshotter erofs-lazy REF` starts at once.
import type { Argv } from 'yargs';
import { ContainerdClient, DEFAULT_NAMESPACE, DEFAULT_SNAPSHOTTER, rpullImage } from '../containerd/index.js';
import type { LayerResult, RpullReport } from '../containerd/index.js';
import { openImageStore } from '../fetch/index.js';
import { imageStoreOptions, platformOption, withImageAccess } from './common.js';
import { formatBytes, printJson } from './output.js';

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

export function registerRpull<T>(parser: Argv<T>): Argv<T> {
  return parser.command(
    'rpull <reference>',
    'make an image known to containerd with lazily mounted (remote) snapshots instead of downloading it',
    (c) =>
      withImageAccess(c)
        .positional('reference', { type: 'string', demandOption: true, describe: 'registry reference (the image name in containerd)' })
        .option('address', { type: 'string', demandOption: true, describe: "containerd's gRPC socket" })
        .option('namespace', { type: 'string', default: DEFAULT_NAMESPACE, describe: 'containerd namespace' })
        .option('snapshotter', { type: 'string', default: DEFAULT_SNAPSHOTTER, describe: 'containerd snapshotter to unpack into' })
        .option('json', { type: 'boolean', default: false, describe: 'print a JSON report instead of lines' }),
    async (args) => {
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
    },
  ) as unknown as Argv<T>;
}

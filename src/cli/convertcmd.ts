// What `erofs-lazy convert` does (its options are in convert.ts): converts every layer of an image to
// seekable EROFS, showing progress on a terminal, and prints the new image and its layers (or JSON).
import { readFile } from 'node:fs/promises';
import { parseHotPaths } from '../convert/hotpaths.js';
import { convertImage } from '../convert/image.js';
import type { ConvertProgress } from '../convert/image.js';
import { openImageStore } from '../fetch/index.js';
import type { ImageAccessArgs } from './common.js';
import { imageStoreOptions, platformOption } from './imageargs.js';
import { formatBytes, printJson, ProgressLine, shortDigest } from './output.js';

const PHASE_TEXT: Record<ConvertProgress['phase'], string> = {
  'fetch-and-build': 'fetching and building EROFS',
  encode: 'compressing into seekable frames',
  push: 'pushing',
  keep: 'already seekable, copying',
  done: 'done',
};

export interface ConvertArgs extends ImageAccessArgs {
  source: string;
  destination: string;
  'chunk-size': number;
  'dm-verity': boolean;
  'dm-verity-block-size': number;
  'work-dir'?: string;
  'hot-paths'?: string;
  json: boolean;
}


export async function runConvert(args: ConvertArgs): Promise<void> {
  const platform = platformOption(args.platform);
  const hotPathsFile = args['hot-paths'];
  const hotPaths = hotPathsFile === undefined ? undefined : parseHotPaths(await readFile(hotPathsFile, 'utf8'), hotPathsFile);
  const source = openImageStore(args.source, imageStoreOptions(args));
  const destination = openImageStore(args.destination, imageStoreOptions(args));
  const progress = new ProgressLine();
  try {
    const result = await convertImage(source, destination, {
      chunkSize: args['chunk-size'],
      dmVerity: args['dm-verity'],
      dmVerityBlockSize: args['dm-verity-block-size'],
      platform,
      workDir: args['work-dir'],
      hotPaths,
      onProgress: (e) =>
        progress.update(`layer ${e.layerIndex + 1}/${e.layerCount} ${shortDigest(e.sourceDigest)}: ${PHASE_TEXT[e.phase]}`),
    });
    progress.done();
    if (args.json) {
      printJson({
        manifestDigest: result.manifestDigest,
        manifestSize: result.manifestSize,
        configDigest: result.configDigest,
        layers: result.layers,
      });
    } else {
      process.stdout.write(`${destination.displayName}@${result.manifestDigest}\n`);
      for (const l of result.layers) {
        const raw = l.uncompressedSize === undefined ? '' : `, EROFS ${formatBytes(l.uncompressedSize)} in ${l.chunkCount} chunks`;
        process.stdout.write(`  ${shortDigest(l.sourceDigest)} -> ${shortDigest(l.digest)} ${l.action} (${formatBytes(l.size)}${raw})\n`);
      }
    }
  } finally {
    progress.done();
    await Promise.all([source.close(), destination.close()]);
  }
}

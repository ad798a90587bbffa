// The image-access options of common.ts (platform, plain HTTP, hosts directory) turned into the values the
// fetch module takes; loaded by the commands that open images, when they run.
import type { OpenImageStoreOptions } from '../fetch/index.js';
import { parsePlatform } from '../fetch/platform.js';
import type { Platform } from '../oci/types.js';
import type { ImageAccessArgs } from './common.js';

export function platformOption(value: string | undefined): Platform | undefined {
  return value === undefined ? undefined : parsePlatform(value);
}

/** openImageStore's hostsDir for a --hosts-dir value ("" turns hosts.toml off). */
export function hostsDirOption(value: string | undefined): string | undefined {
  return value === undefined || value === '' ? undefined : value;
}

/** The openImageStore options these arguments name. */
export function imageStoreOptions(args: ImageAccessArgs): OpenImageStoreOptions {
  return { plainHttp: args['plain-http'], platform: platformOption(args.platform), hostsDir: hostsDirOption(args['hosts-dir']) };
}

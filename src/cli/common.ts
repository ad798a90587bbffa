// Options shared by the commands that read or write images: platform, plain HTTP, and the containerd-style
// hosts directory (hosts.toml mirrors and TLS per registry), turned into openImageStore options.
import type { Argv } from 'yargs';
import { DEFAULT_HOSTS_DIR, parsePlatform } from '../fetch/index.js';
import type { OpenImageStoreOptions } from '../fetch/index.js';
import type { Platform } from '../oci/types.js';

export interface ImageAccessArgs {
  platform?: string;
  'plain-http': boolean;
  'hosts-dir': string;
}

export function withImageAccess<T>(y: Argv<T>): Argv<T & ImageAccessArgs> {
  return y
    .option('platform', {
      type: 'string',
      describe: 'platform to pick from an image index, os/arch[/variant] (default: this host, linux)',
    })
    .option('plain-http', {
      type: 'boolean',
      default: false,
      describe: 'use HTTP instead of HTTPS for the registry (loopback hosts use HTTP anyway)',
    })
    .option('hosts-dir', {
      type: 'string',
      default: DEFAULT_HOSTS_DIR,
      describe: 'containerd-style hosts directory (<dir>/<registry>/hosts.toml): mirrors and TLS per registry; "" for none',
    }) as Argv<T & ImageAccessArgs>;
}

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

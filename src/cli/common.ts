// Options shared by the commands that read or write images: platform, plain HTTP, and the containerd-style
// hosts directory (hosts.toml mirrors and TLS per registry). Only the option definitions live here (loaded on
// every start-up); imageargs.ts turns the values into openImageStore options when a command runs.
import type { Argv } from 'yargs';
import { DEFAULT_HOSTS_DIR } from './defaults.js';

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

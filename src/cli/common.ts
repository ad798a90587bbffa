// Options shared by the commands that read or write images (platform, plain HTTP, JSON output).
import type { Argv } from 'yargs';
import { parsePlatform } from '../fetch/index.js';
import type { Platform } from '../oci/types.js';

export interface ImageAccessArgs {
  platform?: string;
  'plain-http': boolean;
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
    }) as Argv<T & ImageAccessArgs>;
}

export function platformOption(value: string | undefined): Platform | undefined {
  return value === undefined ? undefined : parsePlatform(value);
}

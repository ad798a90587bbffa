// `erofs-lazy rpull`: makes an image known to containerd without downloading its seekable layers.
// Placeholder until the containerd client lands (issue 5).
import type { Argv } from 'yargs';

export function registerRpull<T>(parser: Argv<T>): Argv<T> {
  return parser;
}

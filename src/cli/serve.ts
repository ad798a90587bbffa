// `erofs-lazy serve`: the containerd remote snapshotter (gRPC over a unix socket). Placeholder until the
// snapshotter lands (issue 5).
import type { Argv } from 'yargs';

export function registerServe<T>(parser: Argv<T>): Argv<T> {
  return parser;
}

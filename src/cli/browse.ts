// `erofs-lazy ls`, `cat` and `stat`: look inside an image without mounting it. Placeholder until the
// user-space EROFS reader lands (issue 7).
import type { Argv } from 'yargs';

export function registerBrowse<T>(parser: Argv<T>): Argv<T> {
  return parser;
}

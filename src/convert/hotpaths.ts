// The hot-paths file of `convert --hot-paths` (written by `profile paths`): the paths a workload reads first,
// one absolute path per line, most urgent first; blank lines and lines starting with '#' are skipped.
// Names holding a newline cannot be listed (they are simply not prioritized).

/** Most paths accepted from a --hot-paths file. */
export const MAX_HOT_PATHS = 1_000_000;

/** The paths of a --hot-paths file: one per line, blank lines and lines starting with '#' skipped. */
export function parseHotPaths(text: string, where: string): string[] {
  const paths = text.split('\n').filter((line) => line !== '' && !line.startsWith('#'));
  if (paths.length > MAX_HOT_PATHS) throw new Error(`${where}: ${paths.length} paths exceed ${MAX_HOT_PATHS}`);
  const bad = paths.find((p) => !p.startsWith('/') || p.includes('\0'));
  if (bad !== undefined) throw new Error(`${where}: ${JSON.stringify(bad)} is not an absolute path (one per line, as \`profile paths\` writes them)`);
  return paths;
}

#!/usr/bin/env node
// Entry point of the `erofs-lazy` command: runs the compiled CLI from dist/ (see src/cli/entry.ts).
import { run } from '../dist/src/cli/entry.js';

run(process.argv.slice(2)).then(
  (code) => { process.exitCode = code; },
  (err) => {
    process.stderr.write(`erofs-lazy: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exitCode = 1;
  },
);

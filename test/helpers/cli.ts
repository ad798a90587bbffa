// Test helper: runs the real `erofs-lazy` binary (bin/erofs-lazy.js) and captures its output.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { REPO_ROOT } from './registry.js';

export const CLI_PATH = join(REPO_ROOT, 'bin/erofs-lazy.js');
const CLI_TIMEOUT_MS = 300_000;

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

export function runCli(args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      [CLI_PATH, ...args],
      { env: { ...process.env, ...options.env }, maxBuffer: 64 * 1024 * 1024, timeout: CLI_TIMEOUT_MS },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

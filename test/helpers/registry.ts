// Test helper: a real distribution registry on a free loopback port, started through scripts/registry,
// with its storage in a fresh temp dir that is removed by stop(). Optionally over HTTPS with a given server
// certificate, requiring client certificates signed by given CAs (see tlscerts.ts for making them).
import { execFile } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);
export const REPO_ROOT = resolve(import.meta.dirname, '../../..');
const REGISTRY_SCRIPT = join(REPO_ROOT, 'scripts/registry');

/** HTTPS for a test registry (PEM file paths). */
export interface TestRegistryTls {
  cert: string;
  key: string;
  /** CAs whose client certificates the registry requires (none: no client certificate asked for). */
  clientCas?: readonly string[];
}

export interface TestRegistryOptions {
  htpasswd?: string;
  tls?: TestRegistryTls;
}

export interface TestRegistry {
  /** "127.0.0.1:PORT" */
  host: string;
  /** "http://127.0.0.1:PORT", or https:// for a TLS registry. */
  origin: string;
  dir: string;
  /** Stops the registry process; the storage stays until stop({ keepData: false }). */
  stop(options?: { keepData?: boolean }): Promise<void>;
  /** Starts it again on the same port and storage (after stop({ keepData: true })). */
  restart(): Promise<void>;
}

export async function startRegistry(options: TestRegistryOptions = {}): Promise<TestRegistry> {
  const dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-test-registry-'));
  const extra = options.htpasswd ? ['--htpasswd', options.htpasswd] : [];
  if (options.tls) {
    extra.push('--tls-cert', options.tls.cert, '--tls-key', options.tls.key);
    for (const ca of options.tls.clientCas ?? []) extra.push('--client-ca', ca);
  }
  const { stdout } = await run(REGISTRY_SCRIPT, ['start', '--dir', dir, '--port', '0', ...extra]);
  const host = stdout.trim();
  const port = host.split(':')[1]!;
  return {
    host,
    origin: `${options.tls ? 'https' : 'http'}://${host}`,
    dir,
    async stop({ keepData = false } = {}) {
      await run(REGISTRY_SCRIPT, ['stop', '--dir', dir]);
      if (!keepData) await rm(dir, { recursive: true, force: true });
    },
    async restart() {
      await run(REGISTRY_SCRIPT, ['start', '--dir', dir, '--port', port, ...extra]);
    },
  };
}

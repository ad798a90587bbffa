// What `erofs-lazy login [--username U] [--password-stdin] HOST` and `erofs-lazy logout HOST` do (their
// options are in login.ts), like docker's: login checks the credentials against the registry's /v2/
// (answering its Basic or Bearer challenge), then stores them as an `auths` entry of the docker config
// (atomic write, mode 0600, other keys kept); logout removes that entry. The password comes from stdin;
// `--password` exists for compatibility only and warns, since a command-line value shows up in `ps`.
import { RegistryClient, registryScheme } from '../fetch/http.js';
import { dockerConfigPath, normalizeRegistryHost, removeAuthEntry, saveAuthEntry, StaticCredentials } from '../fetch/credentials.js';
import { RegistryError } from '../fetch/errors.js';
import { DOCKER_HUB_API_HOST, DOCKER_HUB_REGISTRY } from '../fetch/reference.js';
import { DEFAULT_LOGIN_HOST } from './login.js';

/** Largest password read from stdin. */
export const MAX_PASSWORD_STDIN_BYTES = 64 * 1024;

export const PASSWORD_FLAG_WARNING = 'WARNING! Using --password via the CLI is insecure. Use --password-stdin.';

/** Reads the whole of stdin (capped), without its trailing newline. */
async function readPasswordStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of process.stdin) {
    const data = chunk as Buffer;
    total += data.length;
    if (total > MAX_PASSWORD_STDIN_BYTES) throw new Error(`--password-stdin: more than ${MAX_PASSWORD_STDIN_BYTES} bytes on stdin`);
    chunks.push(data);
  }
  return Buffer.concat(chunks).toString('utf8').replace(/\r?\n$/, '');
}

/** The host to talk to for a login host ("docker.io" → registry-1.docker.io). */
function apiHostFor(host: string): string {
  const normalized = normalizeRegistryHost(host);
  return normalized === DOCKER_HUB_REGISTRY ? DOCKER_HUB_API_HOST : normalized;
}

/**
 * Checks `username`/`password` against `host`'s /v2/ endpoint, answering its challenge. Throws a
 * RegistryError (RegistryAuthError for refused credentials) that never contains the password.
 */
export async function verifyLogin(host: string, username: string, password: string, options: { plainHttp?: boolean } = {}): Promise<void> {
  const apiHost = apiHostFor(host);
  const client = new RegistryClient({ credentials: new StaticCredentials({ [apiHost]: { username, password } }, 'the given username and password') });
  try {
    const url = new URL(`${registryScheme(apiHost, options.plainHttp)}://${apiHost}/v2/`);
    const res = await client.send({ operation: 'login', method: 'GET', url, scopes: [] });
    await res.body.dump().catch(() => undefined);
    if (res.status !== 200) throw new RegistryError({ operation: 'login', url, status: res.status, reason: `registry ${apiHost} did not accept the login` });
  } finally {
    await client.close();
  }
}

interface LoginArgs {
  host?: string;
  username?: string;
  password?: string;
  'password-stdin': boolean;
  'plain-http': boolean;
}

export async function runLogin(args: LoginArgs): Promise<void> {
  const host = normalizeRegistryHost(args.host ?? DEFAULT_LOGIN_HOST);
  if (args.username === undefined || args.username === '') throw new Error('login: --username is required');
  let password: string;
  if (args.password !== undefined) {
    if (args['password-stdin']) throw new Error('login: --password and --password-stdin are mutually exclusive');
    process.stderr.write(`${PASSWORD_FLAG_WARNING}\n`);
    password = args.password;
  } else if (args['password-stdin']) {
    password = await readPasswordStdin();
  } else {
    throw new Error('login: give the password on stdin with --password-stdin');
  }
  if (password === '') throw new Error('login: the password is empty');
  await verifyLogin(host, args.username, password, { plainHttp: args['plain-http'] });
  const path = dockerConfigPath();
  await saveAuthEntry(path, host, args.username, password);
  process.stdout.write(`Login Succeeded (credentials stored in ${path})\n`);
}

export async function runLogout(args: { host?: string }): Promise<void> {
  const host = normalizeRegistryHost(args.host ?? DEFAULT_LOGIN_HOST);
  const path = dockerConfigPath();
  if (await removeAuthEntry(path, host)) process.stdout.write(`Removing login credentials for ${host}\n`);
  else process.stdout.write(`Not logged in to ${host}\n`);
}

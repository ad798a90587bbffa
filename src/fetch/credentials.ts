// Registry credentials from the docker client configuration: `$DOCKER_CONFIG/config.json` (else
// `~/.docker/config.json`) with its `auths` entries (`auth` = base64 user:pass, `username`/`password`,
// `identitytoken`), per-registry `credHelpers` and the default `credsStore`, both spoken to through the
// `docker-credential-<name>` helper protocol. Results are cached until refresh() (called after an auth
// failure, so rotated credentials are picked up without a restart). Also writes and removes `auths`
// entries for `login` / `logout` (atomic replace, mode 0600, other keys kept). Secrets never appear in
// errors: messages name the config file or the helper, never the helper's output.
import { spawn } from 'node:child_process';
import { chmod, mkdir, open, readFile, rename, rm } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join } from 'node:path';
import { DOCKER_HUB_API_HOST, DOCKER_HUB_REGISTRY } from './reference.js';

/** The `auths` key (and helper server URL) docker uses for Docker Hub. */
export const DOCKER_HUB_AUTH_KEY = 'https://index.docker.io/v1/';
/** How long a credential helper may take to answer `get`. */
export const CREDENTIAL_HELPER_TIMEOUT_MS = 10_000;
/** Largest helper answer read (stdout). */
export const MAX_HELPER_OUTPUT_BYTES = 64 * 1024;
/** Largest config file read. */
export const MAX_CONFIG_BYTES = 4 * 1024 * 1024;
/** Mode of a config file written by login/logout. */
export const CONFIG_FILE_MODE = 0o600;
/** Username a credential helper returns when the secret is an identity (refresh) token. */
export const IDENTITY_TOKEN_USERNAME = '<token>';

/** Credentials for one registry; `source` says where they came from (never the secret itself). */
export interface RegistryCredentials {
  username?: string;
  password?: string;
  /** OAuth2 refresh token, used with the token issuer instead of username/password. */
  identityToken?: string;
  /** e.g. "/home/u/.docker/config.json" or "credential helper docker-credential-pass". */
  source: string;
}

/** What the registry client needs: credentials per registry host, and a way to drop cached ones. */
export interface CredentialProvider {
  /** Credentials for `host` (as in the request URL, e.g. "registry-1.docker.io" or "127.0.0.1:5000"). */
  get(host: string): Promise<RegistryCredentials | undefined>;
  /** Forgets cached credentials so that the next get() re-reads the config and re-asks helpers. */
  refresh(): void;
}

/** A problem reading the config or running a helper; the message carries no secret. */
export class CredentialError extends Error {
  override name = 'CredentialError';
}

interface AuthEntry {
  auth?: string;
  username?: string;
  password?: string;
  identitytoken?: string;
}

export interface DockerConfig {
  auths: Record<string, AuthEntry>;
  credHelpers: Record<string, string>;
  credsStore: string | undefined;
}

/**
 * The registry host a config key or reference host stands for: scheme, path and trailing slash removed,
 * lowercased, and every Docker Hub spelling (index.docker.io, registry-1.docker.io, the v1 URL) → docker.io.
 */
export function normalizeRegistryHost(key: string): string {
  let host = key.trim();
  const scheme = /^[a-z][a-z0-9+.-]*:\/\//i.exec(host);
  if (scheme) host = host.slice(scheme[0].length);
  const slash = host.indexOf('/');
  if (slash >= 0) host = host.slice(0, slash);
  host = host.toLowerCase();
  if (host === 'index.docker.io' || host === DOCKER_HUB_API_HOST || host === DOCKER_HUB_REGISTRY) return DOCKER_HUB_REGISTRY;
  return host;
}

/** The server URL docker passes to credential helpers and uses as the `auths` key for a host. */
export function serverUrlFor(host: string): string {
  const normalized = normalizeRegistryHost(host);
  return normalized === DOCKER_HUB_REGISTRY ? DOCKER_HUB_AUTH_KEY : normalized;
}

/** `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  const dir = env['DOCKER_CONFIG'];
  return join(dir !== undefined && dir !== '' ? dir : join(env['HOME'] || homedir(), '.docker'), 'config.json');
}

function stringRecord(value: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return out;
  for (const [k, v] of Object.entries(value)) if (typeof v === 'string') out[k] = v;
  return out;
}

/** Parses config.json text; a missing section is empty. Throws CredentialError (without content) on bad JSON. */
export function parseDockerConfig(text: string, path: string): DockerConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new CredentialError(`docker config ${path} is not valid JSON`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new CredentialError(`docker config ${path} is not a JSON object`);
  const record = doc as Record<string, unknown>;
  const auths: Record<string, AuthEntry> = {};
  const rawAuths = record['auths'];
  if (typeof rawAuths === 'object' && rawAuths !== null && !Array.isArray(rawAuths)) {
    for (const [key, value] of Object.entries(rawAuths)) {
      const entry = stringRecord(value);
      const clean: AuthEntry = {};
      for (const field of ['auth', 'username', 'password', 'identitytoken'] as const) if (entry[field]) clean[field] = entry[field];
      auths[key] = clean;
    }
  }
  const credsStore = typeof record['credsStore'] === 'string' && record['credsStore'] !== '' ? record['credsStore'] : undefined;
  return { auths, credHelpers: stringRecord(record['credHelpers']), credsStore };
}

/** Reads the config; a missing file is an empty config. */
export async function readDockerConfig(path: string): Promise<DockerConfig> {
  let text: string;
  try {
    const bytes = await readFile(path);
    if (bytes.length > MAX_CONFIG_BYTES) throw new CredentialError(`docker config ${path} is larger than ${MAX_CONFIG_BYTES} bytes`);
    text = bytes.toString('utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { auths: {}, credHelpers: {}, credsStore: undefined };
    if (err instanceof CredentialError) throw err;
    throw new CredentialError(`cannot read docker config ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  return parseDockerConfig(text, path);
}

/** Credentials of an `auths` entry, or undefined when it has none. */
export function credentialsFromEntry(entry: AuthEntry, source: string): RegistryCredentials | undefined {
  const creds: RegistryCredentials = { source };
  if (entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw new CredentialError(`docker config ${source}: an "auth" entry is not base64 of user:password`);
    creds.username = decoded.slice(0, colon);
    creds.password = decoded.slice(colon + 1);
  } else if (entry.username !== undefined || entry.password !== undefined) {
    if (entry.username) creds.username = entry.username;
    if (entry.password) creds.password = entry.password;
  }
  if (entry.identitytoken) creds.identityToken = entry.identitytoken;
  if (creds.username === undefined && creds.password === undefined && creds.identityToken === undefined) return undefined;
  return creds;
}

const HELPER_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

/**
 * Runs `docker-credential-<name> get` with the server URL on stdin. Undefined when the helper says
 * "credentials not found"; CredentialError (naming the helper and exit status only) on any other failure.
 */
export async function runCredentialHelper(name: string, serverUrl: string, timeoutMs = CREDENTIAL_HELPER_TIMEOUT_MS): Promise<RegistryCredentials | undefined> {
  const program = `docker-credential-${name}`;
  if (!HELPER_NAME.test(name)) throw new CredentialError(`invalid credential helper name ${JSON.stringify(name.slice(0, 64))}`);
  const source = `credential helper ${program}`;
  const result = await new Promise<{ code: number | null; signal: NodeJS.Signals | null; stdout: string; timedOut: boolean }>((resolve, reject) => {
    // Its own process group, so that a timeout also ends whatever the helper started.
    const child = spawn(program, ['get'], { stdio: ['pipe', 'pipe', 'ignore'], detached: true });
    let stdout = '';
    let size = 0;
    let timedOut = false;
    const killGroup = (): void => {
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL');
      }
    };
    const timer = setTimeout(() => {
      timedOut = true;
      killGroup();
      child.stdout.destroy();
      resolve({ code: null, signal: 'SIGKILL', stdout: '', timedOut });
    }, timeoutMs);
    child.stdout.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_HELPER_OUTPUT_BYTES) killGroup();
      else stdout += chunk.toString('utf8');
    });
    child.stdin.on('error', () => undefined);
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      reject(new CredentialError(err.code === 'ENOENT' ? `${source} is not installed (not on PATH)` : `${source} could not be started (${err.code ?? 'error'})`));
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, timedOut });
    });
    child.stdin.end(serverUrl);
  });
  if (result.timedOut) throw new CredentialError(`${source} did not answer within ${timeoutMs} ms`);
  if (result.code !== 0) {
    if (/credentials not found/i.test(result.stdout)) return undefined;
    throw new CredentialError(`${source} failed (${result.signal !== null ? `signal ${result.signal}` : `exit status ${result.code}`})`);
  }
  let doc: unknown;
  try {
    doc = JSON.parse(result.stdout);
  } catch {
    throw new CredentialError(`${source} answered something that is not JSON`);
  }
  const fields = stringRecord(doc);
  const username = fields['Username'] ?? '';
  const secret = fields['Secret'] ?? '';
  if (secret === '') return undefined;
  if (username === IDENTITY_TOKEN_USERNAME) return { identityToken: secret, source };
  return { username, password: secret, source };
}

export interface DockerCredentialStoreOptions {
  /** Config file; default dockerConfigPath(env). */
  configPath?: string;
  /** Environment for DOCKER_CONFIG / HOME; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Override of CREDENTIAL_HELPER_TIMEOUT_MS. */
  helperTimeoutMs?: number;
}

/** Credentials from the docker config and its helpers, cached per host until refresh(). */
export class DockerCredentialStore implements CredentialProvider {
  readonly configPath: string;
  private readonly helperTimeoutMs: number;
  private config: Promise<DockerConfig> | undefined;
  private readonly cache = new Map<string, Promise<RegistryCredentials | undefined>>();

  constructor(options: DockerCredentialStoreOptions = {}) {
    this.configPath = options.configPath ?? dockerConfigPath(options.env);
    this.helperTimeoutMs = options.helperTimeoutMs ?? CREDENTIAL_HELPER_TIMEOUT_MS;
  }

  refresh(): void {
    this.config = undefined;
    this.cache.clear();
  }

  get(host: string): Promise<RegistryCredentials | undefined> {
    const key = normalizeRegistryHost(host);
    let pending = this.cache.get(key);
    if (!pending) {
      pending = this.lookup(key);
      this.cache.set(key, pending);
      // A failure is not cached: the next request tries again.
      pending.catch(() => {
        if (this.cache.get(key) === pending) this.cache.delete(key);
      });
    }
    return pending;
  }

  private async lookup(host: string): Promise<RegistryCredentials | undefined> {
    this.config ??= readDockerConfig(this.configPath);
    let config: DockerConfig;
    try {
      config = await this.config;
    } catch (err) {
      this.config = undefined;
      throw err;
    }
    const helper = Object.entries(config.credHelpers).find(([k]) => normalizeRegistryHost(k) === host)?.[1];
    if (helper) return runCredentialHelper(helper, serverUrlFor(host), this.helperTimeoutMs);
    const exact = Object.entries(config.auths).find(([k]) => normalizeRegistryHost(k) === host);
    if (exact) {
      const creds = credentialsFromEntry(exact[1], this.configPath);
      if (creds) return creds;
    }
    if (config.credsStore) return runCredentialHelper(config.credsStore, serverUrlFor(host), this.helperTimeoutMs);
    return undefined;
  }
}

/** Fixed credentials (tests, programmatic use). */
export class StaticCredentials implements CredentialProvider {
  constructor(private readonly byHost: Record<string, Omit<RegistryCredentials, 'source'>>, private readonly source = 'static credentials') {}
  async get(host: string): Promise<RegistryCredentials | undefined> {
    const key = normalizeRegistryHost(host);
    const entry = Object.entries(this.byHost).find(([k]) => normalizeRegistryHost(k) === key)?.[1];
    return entry ? { ...entry, source: this.source } : undefined;
  }
  refresh(): void {}
}

async function readRawConfig(path: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return {};
    throw new CredentialError(`cannot read docker config ${path}: ${(err as NodeJS.ErrnoException).code ?? 'error'}`);
  }
  if (text.trim() === '') return {};
  parseDockerConfig(text, path);
  return JSON.parse(text) as Record<string, unknown>;
}

/** Writes `doc` to `path` atomically (temp file in the same dir, fsync, rename), mode 0600. */
async function writeConfigAtomic(path: string, doc: Record<string, unknown>): Promise<void> {
  await mkdir(dirname(path), { recursive: true, mode: 0o700 });
  const temp = `${path}.tmp-${process.pid}-${Date.now()}`;
  const handle = await open(temp, 'wx', CONFIG_FILE_MODE);
  try {
    await handle.writeFile(`${JSON.stringify(doc, null, '\t')}\n`);
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temp, { force: true });
    throw err;
  }
  await handle.close();
  await chmod(temp, CONFIG_FILE_MODE);
  await rename(temp, path).catch(async (err: unknown) => {
    await rm(temp, { force: true });
    throw err;
  });
}

/** Keys of `auths` standing for `host` (any spelling). */
function matchingKeys(auths: Record<string, unknown>, host: string): string[] {
  const wanted = normalizeRegistryHost(host);
  return Object.keys(auths).filter((k) => normalizeRegistryHost(k) === wanted);
}

/** Stores username/password for `host` in the config's `auths` (as `auth`), keeping every other key. */
export async function saveAuthEntry(path: string, host: string, username: string, password: string): Promise<void> {
  const doc = await readRawConfig(path);
  const auths = typeof doc['auths'] === 'object' && doc['auths'] !== null && !Array.isArray(doc['auths']) ? (doc['auths'] as Record<string, unknown>) : {};
  for (const key of matchingKeys(auths, host)) delete auths[key];
  auths[serverUrlFor(host)] = { auth: Buffer.from(`${username}:${password}`, 'utf8').toString('base64') };
  doc['auths'] = auths;
  await writeConfigAtomic(path, doc);
}

/** Removes the `auths` entries for `host`; false when there was none (the file is then left alone). */
export async function removeAuthEntry(path: string, host: string): Promise<boolean> {
  const doc = await readRawConfig(path);
  const auths = typeof doc['auths'] === 'object' && doc['auths'] !== null && !Array.isArray(doc['auths']) ? (doc['auths'] as Record<string, unknown>) : {};
  const keys = matchingKeys(auths, host);
  if (keys.length === 0) return false;
  for (const key of keys) delete auths[key];
  doc['auths'] = auths;
  await writeConfigAtomic(path, doc);
  return true;
}

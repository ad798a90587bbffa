// containerd-style registry host configuration: `<hostsDir>/<host>/hosts.toml` (or `<hostsDir>/_default/
// hosts.toml` when the host has no directory) turned into an ordered list of endpoints: each `[host."URL"]`
// table as written, then the `server` (default: the registry's own API host, https unless plain HTTP is asked
// for or the host is loopback without `ca`/`client` at the top level). Per endpoint: capabilities
// (pull/resolve/push), TLS material (ca, client cert/key, skip_verify), override_path and extra headers. A
// missing directory or file means "no mirrors"; a malformed file is an error naming the file and key. TLS
// files are read by readEndpointTls(), errors name the path.
import { readFileSync } from 'node:fs';
import { rootCertificates } from 'node:tls';
import { isAbsolute, join, resolve } from 'node:path';
import { parse } from 'smol-toml';
import { registryScheme } from './http.js';

/** Where containerd keeps per-registry host directories; the CLI's --hosts-dir default. */
export const DEFAULT_HOSTS_DIR = '/etc/containerd/certs.d';
/** File read inside a host directory. */
export const HOSTS_FILE_NAME = 'hosts.toml';
/** Directory used when a registry has no directory of its own. */
export const DEFAULT_HOST_DIR_NAME = '_default';
/** API path appended to an endpoint URL unless override_path is set. */
export const API_PATH = '/v2';

export type HostCapability = 'pull' | 'resolve' | 'push';
const ALL_CAPABILITIES: readonly HostCapability[] = ['pull', 'resolve', 'push'];
/** Capabilities of an endpoint whose table gives none. */
export const DEFAULT_CAPABILITIES: readonly HostCapability[] = ALL_CAPABILITIES;

/** TLS settings of one endpoint (paths are absolute). */
export interface EndpointTlsConfig {
  /** CA certificate files trusted in addition to Node's bundled root certificates. */
  caFiles: readonly string[];
  /** Client certificate and key files (a single PEM holding both has the same path twice). */
  clientPairs: readonly { certFile: string; keyFile: string }[];
  /** Do not verify the server's certificate. */
  skipVerify: boolean;
}

/** One place to send registry requests to. */
export interface RegistryEndpoint {
  /** Scheme, host and port, e.g. "https://mirror.example:5000". */
  origin: string;
  /** API root path without a trailing slash, e.g. "/v2" or "/proxy/v2" (override_path: as written). */
  apiRoot: string;
  /** What the endpoint may be used for. */
  capabilities: ReadonlySet<HostCapability>;
  tls: EndpointTlsConfig;
  /** Extra headers sent with every request to this endpoint. */
  headers: Readonly<Record<string, string>>;
  /** False for the registry server itself (the last endpoint), true for mirrors. */
  mirror: boolean;
  /** The file the endpoint was configured in, if any (for messages). */
  source: string | undefined;
}

export interface LoadHostsOptions {
  /** Plain HTTP for the default server (when hosts.toml gives no `server`). */
  plainHttp?: boolean;
  /** Host that serves the registry API when it differs from the reference's registry (docker.io). */
  apiHost?: string;
}

/** A hosts.toml that cannot be used; the message names the file and the key. */
export class HostsConfigError extends Error {
  override name = 'HostsConfigError';
  constructor(
    readonly file: string,
    readonly key: string | undefined,
    reason: string,
    options?: { cause?: unknown },
  ) {
    super(`${file}${key !== undefined ? `: ${key}` : ''}: ${reason}`, options);
  }
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function readIfExists(file: string): string | undefined {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new HostsConfigError(file, undefined, `cannot read: ${(err as Error).message}`, { cause: err });
  }
}

const TABLE_KEYS: ReadonlySet<string> = new Set(['capabilities', 'ca', 'client', 'skip_verify', 'override_path', 'header']);
const TOP_KEYS: ReadonlySet<string> = new Set([...TABLE_KEYS, 'server', 'host']);

interface Ctx {
  file: string;
  dir: string;
}

function pathsOf(value: unknown, ctx: Ctx, key: string): string[] {
  const list = typeof value === 'string' ? [value] : value;
  if (!Array.isArray(list) || list.some((p) => typeof p !== 'string' || p === '')) throw new HostsConfigError(ctx.file, key, 'must be a path or a list of paths');
  return (list as string[]).map((p) => (isAbsolute(p) ? p : resolve(ctx.dir, p)));
}

function clientPairsOf(value: unknown, ctx: Ctx, key: string): { certFile: string; keyFile: string }[] {
  const abs = (p: string): string => (isAbsolute(p) ? p : resolve(ctx.dir, p));
  const bad = (): HostsConfigError => new HostsConfigError(ctx.file, key, 'must be a certificate path, or a list of paths or [certificate, key] pairs');
  if (typeof value === 'string' && value !== '') return [{ certFile: abs(value), keyFile: abs(value) }];
  if (!Array.isArray(value)) throw bad();
  return value.map((item: unknown) => {
    if (typeof item === 'string' && item !== '') return { certFile: abs(item), keyFile: abs(item) };
    // containerd accepts [cert, key] and [cert] (a file holding both).
    if (Array.isArray(item) && (item.length === 1 || item.length === 2) && item.every((p) => typeof p === 'string' && p !== '')) {
      return { certFile: abs(item[0] as string), keyFile: abs((item[1] ?? item[0]) as string) };
    }
    throw bad();
  });
}

/** A URL text fit for messages: user info (credentials) replaced. */
function withoutUserInfo(urlText: string): string {
  return urlText.replace(/^([a-zA-Z][a-zA-Z0-9+.-]*:\/\/)[^/@]*@/, '$1<redacted>@');
}

function endpointFrom(urlText: string, table: Record<string, unknown>, ctx: Ctx, key: string, mirror: boolean): RegistryEndpoint {
  for (const name of Object.keys(table)) {
    if (!TABLE_KEYS.has(name) && !(key === '' && TOP_KEYS.has(name))) throw new HostsConfigError(ctx.file, `${key}${key ? '.' : ''}${name}`, 'unknown key');
  }
  const k = (name: string): string => `${key}${key ? '.' : ''}${name}`;
  let url: URL;
  try {
    url = new URL(urlText);
  } catch {
    throw new HostsConfigError(ctx.file, key || 'server', `${JSON.stringify(withoutUserInfo(urlText))} is not a URL (write it with http:// or https://)`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new HostsConfigError(ctx.file, key || 'server', `${JSON.stringify(withoutUserInfo(urlText))} must use http:// or https://`);
  if (url.username || url.password || url.search || url.hash) throw new HostsConfigError(ctx.file, key || 'server', 'URL must not carry user info, a query or a fragment');

  let capabilities: ReadonlySet<HostCapability> = new Set(DEFAULT_CAPABILITIES);
  if (table['capabilities'] !== undefined) {
    const caps = table['capabilities'];
    if (!Array.isArray(caps) || caps.some((c) => typeof c !== 'string' || !(ALL_CAPABILITIES as readonly string[]).includes(c))) {
      throw new HostsConfigError(ctx.file, k('capabilities'), `must be a list of ${ALL_CAPABILITIES.map((c) => `"${c}"`).join(', ')}`);
    }
    capabilities = new Set(caps as HostCapability[]);
  }
  const skip = table['skip_verify'];
  if (skip !== undefined && typeof skip !== 'boolean') throw new HostsConfigError(ctx.file, k('skip_verify'), 'must be true or false');
  const overridePath = table['override_path'];
  if (overridePath !== undefined && typeof overridePath !== 'boolean') throw new HostsConfigError(ctx.file, k('override_path'), 'must be true or false');
  const headers: Record<string, string> = {};
  if (table['header'] !== undefined) {
    const header = table['header'];
    if (!isRecord(header)) throw new HostsConfigError(ctx.file, k('header'), 'must be a table');
    for (const [name, value] of Object.entries(header)) {
      if (typeof value === 'string') headers[name.toLowerCase()] = value;
      else if (Array.isArray(value) && value.every((v) => typeof v === 'string')) headers[name.toLowerCase()] = (value as string[]).join(', ');
      else throw new HostsConfigError(ctx.file, `${k('header')}.${name}`, 'must be a string or a list of strings');
    }
  }
  const path = url.pathname.replace(/\/+$/, '');
  return {
    origin: url.origin,
    apiRoot: overridePath === true ? path : `${path}${API_PATH}`,
    capabilities,
    tls: {
      caFiles: table['ca'] !== undefined ? pathsOf(table['ca'], ctx, k('ca')) : [],
      clientPairs: table['client'] !== undefined ? clientPairsOf(table['client'], ctx, k('client')) : [],
      skipVerify: skip === true,
    },
    headers,
    mirror,
    source: ctx.file,
  };
}

/** The endpoint of the registry itself when no hosts.toml applies. */
export function defaultEndpoint(apiHost: string, plainHttp = false): RegistryEndpoint {
  return {
    origin: `${registryScheme(apiHost, plainHttp)}://${apiHost}`,
    apiRoot: API_PATH,
    capabilities: new Set(DEFAULT_CAPABILITIES),
    tls: { caFiles: [], clientPairs: [], skipVerify: false },
    headers: {},
    mirror: false,
    source: undefined,
  };
}

/** Parses the text of a hosts.toml found at `file` (relative paths are taken from its directory). */
export function parseHostsToml(text: string, file: string, registry: string, options: LoadHostsOptions = {}): RegistryEndpoint[] {
  const ctx: Ctx = { file, dir: resolve(file, '..') };
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (err) {
    throw new HostsConfigError(file, undefined, `not valid TOML: ${(err as Error).message.split('\n')[0] ?? ''}`, { cause: err });
  }
  const endpoints: RegistryEndpoint[] = [];
  const hosts = doc['host'];
  if (hosts !== undefined) {
    if (!isRecord(hosts)) throw new HostsConfigError(file, 'host', 'must be a table of [host."URL"] tables');
    for (const [urlText, table] of Object.entries(hosts)) {
      const key = `host.${JSON.stringify(withoutUserInfo(urlText))}`;
      if (!isRecord(table)) throw new HostsConfigError(file, key, 'must be a table');
      endpoints.push(endpointFrom(urlText, table, ctx, key, true));
    }
  }
  const server = doc['server'];
  if (server !== undefined && typeof server !== 'string') throw new HostsConfigError(file, 'server', 'must be a URL string');
  const apiHost = options.apiHost ?? registry;
  // TLS material for the server means it speaks TLS, also on loopback (plain HTTP there otherwise, as containerd
  // 1.6 does; containerd 1.7 tries HTTPS first): ca/client given without a server are never silently unused.
  const tlsForServer = doc['ca'] !== undefined || doc['client'] !== undefined;
  const serverUrl = server ?? (tlsForServer && options.plainHttp !== true ? `https://${apiHost}` : defaultEndpoint(apiHost, options.plainHttp).origin);
  const top = endpointFrom(serverUrl, doc, ctx, '', false);
  endpoints.push(top);
  return endpoints;
}

/**
 * Endpoints for `registry` (as written in references, with ":port"): from `<hostsDir>/<registry>/hosts.toml`,
 * else `<hostsDir>/_default/hosts.toml`, else just the registry itself.
 */
export function loadRegistryEndpoints(hostsDir: string | undefined, registry: string, options: LoadHostsOptions = {}): RegistryEndpoint[] {
  const apiHost = options.apiHost ?? registry;
  if (hostsDir !== undefined && hostsDir !== '') {
    for (const dirName of [registry, DEFAULT_HOST_DIR_NAME]) {
      if (dirName.includes('/') || dirName === '..' || dirName === '.') continue;
      const file = join(hostsDir, dirName, HOSTS_FILE_NAME);
      const text = readIfExists(file);
      if (text !== undefined) return parseHostsToml(text, file, registry, options);
    }
  }
  return [defaultEndpoint(apiHost, options.plainHttp)];
}

/** TLS material of an endpoint, read from its files; undefined when the endpoint needs no special TLS. */
export interface EndpointTlsMaterial {
  ca?: string[];
  cert?: string[];
  key?: string[];
  rejectUnauthorized: boolean;
  /** Identifies the configuration (for sharing connection pools). */
  id: string;
}

function readTlsFile(file: string, key: string, source: string | undefined): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    throw new HostsConfigError(source ?? file, key, `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, { cause: err });
  }
}

/** Reads the CA and client files of an endpoint. */
export function readEndpointTls(endpoint: RegistryEndpoint): EndpointTlsMaterial | undefined {
  const tls = endpoint.tls;
  if (tls.caFiles.length === 0 && tls.clientPairs.length === 0 && !tls.skipVerify) return undefined;
  const material: EndpointTlsMaterial = {
    rejectUnauthorized: !tls.skipVerify,
    id: JSON.stringify([tls.caFiles, tls.clientPairs, tls.skipVerify]),
  };
  if (tls.caFiles.length > 0) material.ca = [...rootCertificates, ...tls.caFiles.map((f) => readTlsFile(f, 'ca', endpoint.source))];
  if (tls.clientPairs.length > 0) {
    material.cert = tls.clientPairs.map((p) => readTlsFile(p.certFile, 'client', endpoint.source));
    material.key = tls.clientPairs.map((p) => readTlsFile(p.keyFile, 'client', endpoint.source));
  }
  return material;
}

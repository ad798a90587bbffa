// Test helper: a bearer-token issuer for the real distribution registry's `auth.token` mode, on loopback.
// It makes its own RSA key and self-signed certificate (the registry's rootcertbundle), signs RS256 JWTs
// carrying the certificate in `x5c`, and answers the realm the way docker's token servers do: GET with
// Basic credentials (or anonymously, when allowed), and the OAuth2 POST forms (grant_type=password and
// grant_type=refresh_token with an identity token). Token lifetimes are settable at any time; it counts
// the tokens it issued per scope and keeps them so tests can check that none leaked into logs.
// startTokenAuthRegistry() starts a registry (scripts/registry) that trusts a given issuer.
import { execFile } from 'node:child_process';
import { createPrivateKey, randomUUID, sign, X509Certificate, type KeyObject } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { REPO_ROOT, type TestRegistry } from './registry.js';

const run = promisify(execFile);

/** `service` the registry names in its challenges and expects as the JWT audience. */
export const DEFAULT_TOKEN_SERVICE = 'erofs-lazy-test-registry';
/** `iss` of the JWTs, which the registry checks. */
export const DEFAULT_TOKEN_ISSUER = 'erofs-lazy-test-issuer';
/** Token lifetime (expires_in and JWT exp) unless the test sets another. */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 300;
/**
 * Clock-skew leeway distribution 2.8 grants on a JWT's exp (and nbf): it accepts a token up to this long
 * after its exp, so a token the registry itself refuses at time T needs exp = T − leeway.
 */
export const REGISTRY_EXP_LEEWAY_SECONDS = 60;
/** How far before issuance nbf is put, so clock differences never make a new token "not yet valid". */
const NBF_SLACK_SECONDS = 10;
/** Largest POST form read. */
const MAX_FORM_BYTES = 64 * 1024;
/** Validity of the generated signing certificate. */
const CERT_DAYS = 2;

/** How long tokens live: what the client is told, and the exp the registry checks. */
export interface TokenLifetime {
  /** `expires_in` in the answer (what the client believes). */
  expiresInSeconds: number;
  /** Seconds from issuance put in the JWT's `exp` (what the registry checks, with its leeway). */
  jwtExpirySeconds: number;
}

export interface TokenIssuerOptions {
  /** Username → password accepted by Basic GET and the password grant. */
  users?: Readonly<Record<string, string>>;
  /** Identity (refresh) token → subject accepted by the refresh_token grant. */
  identityTokens?: Readonly<Record<string, string>>;
  /** Hand out tokens without credentials (default false: anonymous requests get 401). */
  allowAnonymous?: boolean;
  /** Token lifetime in seconds, enforced by the registry at that time (see lifetimeEnforcedAt). */
  lifetimeSeconds?: number;
  service?: string;
  issuer?: string;
  /** Where the key and certificate are written (default: a new temp dir, removed by close()). */
  dir?: string;
}

/** One request the issuer answered. */
export interface TokenRequestRecord {
  method: 'GET' | 'POST';
  /** OAuth2 grant_type of a POST. */
  grant?: string;
  /** The authenticated subject, or undefined for an anonymous or refused request. */
  subject?: string;
  scopes: string[];
  /** True when a token was issued. */
  issued: boolean;
}

export interface TokenIssuer {
  /** The realm URL to configure in the registry, e.g. "http://127.0.0.1:PORT/token". */
  readonly realm: string;
  readonly service: string;
  readonly issuer: string;
  /** PEM certificate the registry must trust (its rootcertbundle). */
  readonly certPath: string;
  /** Lifetime of the tokens issued from now on; may be changed at any time. */
  lifetime: TokenLifetime;
  /** Every request answered, in order. */
  readonly requests: readonly TokenRequestRecord[];
  /** Tokens issued so far (for checking that none appears in logs or outputs). */
  readonly issuedTokens: readonly string[];
  /** Number of tokens issued, in total or for requests that asked for `scope`. */
  issuedCount(scope?: string): number;
  /** The scopes issued so far, with how many tokens each. */
  issuedPerScope(): ReadonlyMap<string, number>;
  /** Forgets the request log and the issued tokens. */
  resetCounters(): void;
  close(): Promise<void>;
}

/**
 * A lifetime that both the client and the registry see as `seconds`: expires_in = seconds, and the JWT's
 * exp shifted back by the registry's leeway so that the registry itself refuses the token after `seconds`.
 */
export function lifetimeEnforcedAt(seconds: number): TokenLifetime {
  return { expiresInSeconds: seconds, jwtExpirySeconds: seconds - REGISTRY_EXP_LEEWAY_SECONDS };
}

const b64url = (data: Buffer | string): string => Buffer.from(data).toString('base64url');

/** Writes an RSA key and a self-signed certificate for token signing into `dir`. */
async function makeSigningCert(dir: string, commonName: string): Promise<{ keyPath: string; certPath: string }> {
  const keyPath = join(dir, 'token.key');
  const certPath = join(dir, 'token.crt');
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyPath, '-out', certPath, '-days', String(CERT_DAYS), '-subj', `/CN=${commonName}`]);
  return { keyPath, certPath };
}

/** `repository:name:pull,push` → a JWT access entry; other shapes are ignored. */
function accessFor(scope: string): Array<{ type: string; name: string; actions: string[] }> {
  // Repository names have no ':', but a registry:catalog:* scope has three parts too.
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last <= first) return [];
  const actions = scope.slice(last + 1).split(',').filter((a) => a !== '');
  return [{ type: scope.slice(0, first), name: scope.slice(first + 1, last), actions }];
}

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    req.on('data', (c: Buffer) => {
      total += c.length;
      if (total > MAX_FORM_BYTES) req.destroy(new Error('form too large'));
      else chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function decodeBasic(header: string | undefined): { user: string; password: string } | undefined {
  if (!header?.startsWith('Basic ')) return undefined;
  const text = Buffer.from(header.slice('Basic '.length), 'base64').toString('utf8');
  const colon = text.indexOf(':');
  return colon < 0 ? undefined : { user: text.slice(0, colon), password: text.slice(colon + 1) };
}

export async function startTokenIssuer(options: TokenIssuerOptions = {}): Promise<TokenIssuer> {
  const service = options.service ?? DEFAULT_TOKEN_SERVICE;
  const issuerName = options.issuer ?? DEFAULT_TOKEN_ISSUER;
  const ownDir = options.dir === undefined;
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'erofs-lazy-test-issuer-')));
  await mkdir(dir, { recursive: true });
  const users = options.users ?? {};
  const identityTokens = options.identityTokens ?? {};
  const { keyPath, certPath } = await makeSigningCert(dir, issuerName);
  const key: KeyObject = createPrivateKey(await readFile(keyPath, 'utf8'));
  const x5c = [new X509Certificate(await readFile(certPath, 'utf8')).raw.toString('base64')];
  const requests: TokenRequestRecord[] = [];
  const issuedTokens: string[] = [];
  const perScope = new Map<string, number>();
  let lifetime: TokenLifetime = lifetimeEnforcedAt(options.lifetimeSeconds ?? DEFAULT_TOKEN_LIFETIME_SECONDS);

  const tokenFor = (subject: string, scopes: string[]): string => {
    const now = Math.floor(Date.now() / 1000);
    const exp = now + lifetime.jwtExpirySeconds;
    const header = b64url(JSON.stringify({ alg: 'RS256', typ: 'JWT', x5c }));
    const claims = b64url(
      JSON.stringify({ iss: issuerName, sub: subject, aud: service, exp, nbf: Math.min(now, exp) - NBF_SLACK_SECONDS, iat: now, jti: randomUUID(), access: scopes.flatMap(accessFor) }),
    );
    return `${header}.${claims}.${b64url(sign('sha256', Buffer.from(`${header}.${claims}`), key))}`;
  };

  const answer = (res: ServerResponse, status: number, body: unknown): void => {
    const text = JSON.stringify(body);
    res.writeHead(status, { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(text)) });
    res.end(text);
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://issuer');
    const record: TokenRequestRecord = { method: req.method === 'POST' ? 'POST' : 'GET', scopes: [], issued: false };
    requests.push(record);
    let subject: string | undefined;
    let serviceAsked: string | null;
    if (req.method === 'POST') {
      const form = new URLSearchParams(await readBody(req));
      record.grant = form.get('grant_type') ?? '';
      serviceAsked = form.get('service');
      record.scopes = (form.get('scope') ?? '').split(' ').filter((s) => s !== '');
      if (record.grant === 'refresh_token') subject = identityTokens[form.get('refresh_token') ?? ''];
      else if (record.grant === 'password') {
        const user = form.get('username') ?? '';
        if (Object.hasOwn(users, user) && users[user] === form.get('password')) subject = user;
      }
    } else {
      req.resume();
      serviceAsked = url.searchParams.get('service');
      record.scopes = url.searchParams.getAll('scope');
      const basic = decodeBasic(req.headers.authorization);
      if (basic && Object.hasOwn(users, basic.user) && users[basic.user] === basic.password) subject = basic.user;
      else if (basic === undefined && req.headers.authorization === undefined && options.allowAnonymous) subject = '';
    }
    if (subject === undefined || serviceAsked !== service) {
      answer(res, 401, { errors: [{ code: 'UNAUTHORIZED', message: 'authentication required' }] });
      return;
    }
    const token = tokenFor(subject, record.scopes);
    record.subject = subject === '' ? undefined : subject;
    record.issued = true;
    issuedTokens.push(token);
    for (const scope of new Set(record.scopes)) perScope.set(scope, (perScope.get(scope) ?? 0) + 1);
    const issuedAt = new Date().toISOString();
    answer(res, 200, { token, access_token: token, expires_in: lifetime.expiresInSeconds, issued_at: issuedAt });
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) answer(res, 400, { errors: [{ code: 'BAD_REQUEST', message: 'unreadable request' }] });
      else res.destroy();
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const realm = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;

  return {
    realm,
    service,
    issuer: issuerName,
    certPath,
    get lifetime() {
      return lifetime;
    },
    set lifetime(next: TokenLifetime) {
      lifetime = { ...next };
    },
    requests,
    issuedTokens,
    issuedCount(scope?: string) {
      return scope === undefined ? issuedTokens.length : (perScope.get(scope) ?? 0);
    },
    issuedPerScope() {
      return new Map(perScope);
    },
    resetCounters() {
      requests.length = 0;
      issuedTokens.length = 0;
      perScope.clear();
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      if (ownDir) await rm(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A real distribution registry on a free loopback port whose `auth.token` trusts `issuer` (realm,
 * service, issuer name, certificate), with its storage in a fresh temp dir removed by stop().
 */
export async function startTokenAuthRegistry(issuer: TokenIssuer): Promise<TestRegistry> {
  const script = join(REPO_ROOT, 'scripts/registry');
  const dir = await mkdtemp(join(tmpdir(), 'erofs-lazy-test-token-registry-'));
  const tokenArgs = ['--token-realm', issuer.realm, '--token-cert', issuer.certPath, '--token-service', issuer.service, '--token-issuer', issuer.issuer];
  let host: string;
  try {
    host = (await run(script, ['start', '--dir', dir, '--port', '0', ...tokenArgs])).stdout.trim();
  } catch (err) {
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
  const port = host.split(':')[1]!;
  return {
    host,
    origin: `http://${host}`,
    dir,
    async stop({ keepData = false } = {}) {
      await run(script, ['stop', '--dir', dir]);
      if (!keepData) await rm(dir, { recursive: true, force: true });
    },
    async restart() {
      await run(script, ['start', '--dir', dir, '--port', port, ...tokenArgs]);
    },
  };
}

// Registry authentication: parsing WWW-Authenticate challenges, the bearer-token flow (GET
// realm?service=…&scope=…, anonymous or with Basic credentials, or an OAuth2 POST with an identity token),
// with tokens cached per (registry host, scope) until shortly before they expire, and the error for
// refused credentials. Tokens and credentials are kept in memory only and never appear in errors or logs.
import { RegistryError } from './errors.js';
import type { RegistryCredentials } from './credentials.js';

/** Token lifetime assumed when the issuer gives no expires_in (the distribution token spec's default). */
export const DEFAULT_TOKEN_LIFETIME_SECONDS = 60;
/** A cached token is dropped this long before its expiry (half its lifetime when shorter than twice this). */
export const TOKEN_EXPIRY_MARGIN_MS = 5_000;

export interface AuthChallenge {
  /** Lowercased scheme: "bearer", "basic", … */
  scheme: string;
  /** Parameters with lowercased names: realm, service, scope, error, … */
  params: Record<string, string>;
}

/**
 * Parses one or more WWW-Authenticate header values into challenges, e.g.
 * `Bearer realm="https://auth.example/token",service="registry",scope="repository:a/b:pull"`.
 * Handles quoted strings with escapes and several challenges in one value.
 */
export function parseAuthChallenges(header: string | string[] | undefined): AuthChallenge[] {
  if (header === undefined) return [];
  const values = Array.isArray(header) ? header : [header];
  const challenges: AuthChallenge[] = [];
  for (const value of values) {
    let pos = 0;
    let current: AuthChallenge | undefined;
    const skipSpace = (): void => {
      while (pos < value.length && (value[pos] === ' ' || value[pos] === '\t')) pos++;
    };
    const readToken = (): string => {
      const start = pos;
      while (pos < value.length && !/[\s,=]/.test(value[pos]!)) pos++;
      return value.slice(start, pos);
    };
    while (pos < value.length) {
      skipSpace();
      if (value[pos] === ',') {
        pos++;
        continue;
      }
      const token = readToken();
      if (token === '') {
        pos++;
        continue;
      }
      skipSpace();
      if (value[pos] === '=' && current) {
        pos++;
        skipSpace();
        let paramValue = '';
        if (value[pos] === '"') {
          pos++;
          while (pos < value.length && value[pos] !== '"') {
            if (value[pos] === '\\' && pos + 1 < value.length) pos++;
            paramValue += value[pos];
            pos++;
          }
          pos++;
        } else {
          const start = pos;
          while (pos < value.length && value[pos] !== ',') pos++;
          paramValue = value.slice(start, pos).trim();
        }
        current.params[token.toLowerCase()] = paramValue;
      } else {
        current = { scheme: token.toLowerCase(), params: {} };
        challenges.push(current);
      }
    }
  }
  return challenges;
}

interface CachedToken {
  token: string;
  expiresAt: number;
}

/** Fetches a token document from the realm: the JSON answer's parsed body. */
export type TokenRequester = (realm: URL) => Promise<unknown>;

/**
 * Bearer tokens per (host, scope set). Concurrent requests for the same key share one issuer request.
 * `now` is injectable for tests.
 */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();
  private readonly pending = new Map<string, Promise<string>>();

  constructor(private readonly now: () => number = Date.now) {}

  static key(host: string, scopes: readonly string[]): string {
    return `${host} ${[...new Set(scopes)].sort().join(' ')}`;
  }

  /** A valid cached token, or undefined. */
  get(key: string): string | undefined {
    const entry = this.tokens.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.now()) {
      this.tokens.delete(key);
      return undefined;
    }
    return entry.token;
  }

  invalidate(key: string): void {
    this.tokens.delete(key);
  }

  /**
   * Gets a fresh token for `key` from the challenge's realm, asking for `scopes` (several `scope`
   * parameters) and the challenge's service. Throws Error without secrets when the answer has no token.
   */
  async obtain(key: string, challenge: AuthChallenge, scopes: readonly string[], request: TokenRequester): Promise<string> {
    const inFlight = this.pending.get(key);
    if (inFlight) return inFlight;
    const promise = this.fetchToken(key, challenge, scopes, request).finally(() => this.pending.delete(key));
    this.pending.set(key, promise);
    return promise;
  }

  private async fetchToken(key: string, challenge: AuthChallenge, scopes: readonly string[], request: TokenRequester): Promise<string> {
    const realmText = challenge.params['realm'];
    if (!realmText) throw new Error('bearer challenge without a realm');
    let realm: URL;
    try {
      realm = new URL(realmText);
    } catch {
      throw new Error('bearer challenge with an invalid realm URL');
    }
    if (realm.protocol !== 'https:' && realm.protocol !== 'http:') throw new Error(`bearer realm has unsupported scheme ${realm.protocol}`);
    const service = challenge.params['service'];
    if (service) realm.searchParams.set('service', service);
    for (const scope of [...new Set(scopes)]) realm.searchParams.append('scope', scope);
    const issuedAt = this.now();
    const body = await request(realm);
    const doc = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
    const token = typeof doc['token'] === 'string' && doc['token'] !== '' ? doc['token'] : doc['access_token'];
    if (typeof token !== 'string' || token === '') throw new Error('token issuer answered without a token');
    const expiresIn = typeof doc['expires_in'] === 'number' && doc['expires_in'] > 0 ? doc['expires_in'] : DEFAULT_TOKEN_LIFETIME_SECONDS;
    const lifetimeMs = expiresIn * 1000;
    const usableMs = lifetimeMs > 2 * TOKEN_EXPIRY_MARGIN_MS ? lifetimeMs - TOKEN_EXPIRY_MARGIN_MS : lifetimeMs / 2;
    this.tokens.set(key, { token, expiresAt: issuedAt + usableMs });
    return token;
  }
}

/** OAuth2 client id sent with identity-token (refresh_token) requests to a token issuer. */
export const OAUTH_CLIENT_ID = 'erofs-lazy';

/**
 * Credentials the registry or its token issuer refused (after one refresh). Names the registry and where
 * the credentials came from, never the credentials. Its status (401/403) marks it permanent for retries.
 */
export class RegistryAuthError extends RegistryError {
  override name = 'RegistryAuthError';
  /** Where the refused credentials came from ("…/config.json", "credential helper …"). */
  readonly credentialSource: string;
  constructor(details: { operation: string; url: string | URL; status: number; host: string; source: string }, options?: { cause?: unknown }) {
    super(
      { operation: details.operation, url: details.url, status: details.status, reason: `authentication failed for ${details.host} (credentials from ${details.source})` },
      options,
    );
    this.credentialSource = details.source;
  }
}

/** The Authorization header value for Basic credentials. */
export function basicAuthorization(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`, 'utf8').toString('base64')}`;
}

/** True when the credentials can be sent as Basic auth (a username or password is present). */
export function hasPassword(creds: RegistryCredentials | undefined): creds is RegistryCredentials {
  return creds !== undefined && (creds.username !== undefined || creds.password !== undefined);
}

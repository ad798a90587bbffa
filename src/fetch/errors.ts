// Typed errors of the fetch module: registry HTTP failures, content that does not match its descriptor,
// bad image references, OCI layout problems. Messages never carry credentials, tokens or signed query strings.

/** Longest slice of user input (a reference string) that an error message quotes. */
const MAX_QUOTED_INPUT = 200;

/** A registry request that failed: HTTP status, network failure, or a protocol violation in the answer. */
export class RegistryError extends Error {
  override name = 'RegistryError';
  /** HTTP status of the answer; undefined when no answer came (network failure, timeout). */
  readonly status: number | undefined;
  /** What the client was doing, e.g. "resolve manifest", "fetch blob", "upload blob". */
  readonly operation: string;
  /** The request URL without credentials and without its query string. */
  readonly url: string;
  /** First error code from the registry's JSON error body, e.g. MANIFEST_UNKNOWN. */
  readonly code: string | undefined;
  /** First error message from the registry's JSON error body. */
  readonly registryMessage: string | undefined;

  constructor(
    details: { operation: string; url: string | URL; status?: number; code?: string; registryMessage?: string; reason?: string },
    options?: { cause?: unknown },
  ) {
    const url = redactUrl(details.url);
    const parts = [`${details.operation} ${url}`];
    if (details.status !== undefined) parts.push(`HTTP ${details.status}`);
    if (details.code) parts.push(details.code);
    if (details.registryMessage) parts.push(details.registryMessage);
    if (details.reason) parts.push(details.reason);
    super(parts.join(': '), options);
    this.status = details.status;
    this.operation = details.operation;
    this.url = url;
    this.code = details.code;
    this.registryMessage = details.registryMessage;
  }
}

/** Content (blob, manifest, range) whose digest or size differs from what its descriptor promises. */
export class ContentVerificationError extends Error {
  override name = 'ContentVerificationError';
  constructor(
    message: string,
    readonly digest: string,
    readonly kind: 'digest' | 'size' | 'range',
  ) {
    super(message);
  }
}

/** Manifest bytes that are not a usable OCI / Docker schema 2 manifest or index. */
export class ManifestFormatError extends Error {
  override name = 'ManifestFormatError';
}

/** An image reference or local source string that does not follow the grammar. */
export class ImageReferenceError extends Error {
  override name = 'ImageReferenceError';
}

/** No manifest in an index matches the wanted platform, or a platform string is malformed. */
export class PlatformError extends Error {
  override name = 'PlatformError';
}

/** An OCI image layout directory that is missing, malformed, or lacks the wanted tag. */
export class OciLayoutError extends Error {
  override name = 'OciLayoutError';
}

/** A URL fit for messages: no user info, no query string (upload state, signatures), no fragment. */
export function redactUrl(url: string | URL): string {
  let parsed: URL;
  try {
    parsed = typeof url === 'string' ? new URL(url) : new URL(url.href);
  } catch {
    return '<invalid URL>';
  }
  parsed.username = '';
  parsed.password = '';
  const hadQuery = parsed.search !== '';
  parsed.search = '';
  parsed.hash = '';
  return hadQuery ? `${parsed.href}?…` : parsed.href;
}

const DIGEST_SHAPE = /^[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}$/;

/**
 * User input fit for messages: everything up to an '@' that does not introduce a digest is treated as
 * user info ("user:pass@host/…") and replaced; long input is cut.
 */
export function redactInput(input: string): string {
  let text = input;
  const last = text.lastIndexOf('@');
  if (last >= 0) {
    if (DIGEST_SHAPE.test(text.slice(last + 1))) {
      const head = text.slice(0, last);
      const userInfoEnd = head.lastIndexOf('@');
      if (userInfoEnd >= 0) text = `<redacted>@${text.slice(userInfoEnd + 1)}`;
    } else {
      text = `<redacted>@${text.slice(last + 1)}`;
    }
  }
  if (text.length > MAX_QUOTED_INPUT) text = `${text.slice(0, MAX_QUOTED_INPUT)}…`;
  return JSON.stringify(text);
}

// Image references: the docker grammar `[host[:port]/]path[:tag][@digest]` with Docker Hub defaults, and the
// local source syntax `oci:DIR[:TAG]` (or `oci:DIR@DIGEST`) for OCI image layout directories.
import { DigestFormatError, parseDigest } from '../util/digest.js';
import { ImageReferenceError, redactInput } from './errors.js';

/** Registry name that references without a host resolve to. */
export const DOCKER_HUB_REGISTRY = 'docker.io';
/** Host that serves the Docker Hub registry API. */
export const DOCKER_HUB_API_HOST = 'registry-1.docker.io';
/** Legacy Docker Hub names that normalize to DOCKER_HUB_REGISTRY. */
const DOCKER_HUB_ALIASES: readonly string[] = ['index.docker.io', 'registry-1.docker.io'];
/** Namespace of official images on Docker Hub ("busybox" → "library/busybox"). */
export const DOCKER_HUB_OFFICIAL_NAMESPACE = 'library';
/** Tag used when a reference has neither a tag nor a digest. */
export const DEFAULT_TAG = 'latest';
/** Longest repository path plus host the docker grammar allows. */
export const MAX_NAME_LENGTH = 255;
/** Prefix of the local OCI image layout syntax. */
export const OCI_LAYOUT_PREFIX = 'oci:';
/** Optional prefix accepted in front of a registry reference (skopeo's transport syntax). */
const DOCKER_TRANSPORT_PREFIX = 'docker://';

const ALPHANUMERIC = '[a-z0-9]+';
const SEPARATOR = '(?:[._]|__|-+)';
const PATH_COMPONENT = new RegExp(`^${ALPHANUMERIC}(?:${SEPARATOR}${ALPHANUMERIC})*$`);
const DOMAIN_COMPONENT = '(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])';
const DOMAIN = new RegExp(`^(?:${DOMAIN_COMPONENT}(?:\\.${DOMAIN_COMPONENT})*|\\[[0-9a-fA-F:.]+\\])(?::[0-9]{1,5})?$`);
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST_GRAMMAR = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
/** Tags in an OCI layout (`org.opencontainers.image.ref.name`): like docker tags, plus '+' and '@'. */
const LAYOUT_TAG = /^[A-Za-z0-9_][A-Za-z0-9_.+@-]{0,127}$/;
const URL_SCHEME = /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\//;

/** A parsed registry reference, normalized (Docker Hub defaults applied). */
export class RegistryReference {
  readonly kind = 'registry' as const;

  constructor(
    /** Registry as named in references: "docker.io", "127.0.0.1:5000", "[::1]:5000", "ghcr.io". */
    readonly registry: string,
    /** Repository path inside the registry: "library/busybox". */
    readonly repository: string,
    /** The tag; DEFAULT_TAG when the reference had neither tag nor digest. */
    readonly tag: string | undefined,
    /** "algorithm:hex" when the reference pins a digest. */
    readonly digest: string | undefined,
  ) {}

  /** Host (and port) that serves the registry API: registry-1.docker.io for docker.io. */
  get apiHost(): string {
    return this.registry === DOCKER_HUB_REGISTRY ? DOCKER_HUB_API_HOST : this.registry;
  }

  /** "registry/repository", the name used for cross-repository mounts. */
  get name(): string {
    return `${this.registry}/${this.repository}`;
  }

  /** Fully qualified form: "docker.io/library/busybox:latest", "host:5000/a/b@sha256:…". */
  toString(): string {
    return `${this.name}${this.tag !== undefined ? `:${this.tag}` : ''}${this.digest !== undefined ? `@${this.digest}` : ''}`;
  }
}

/** A local OCI image layout directory with an optional tag or digest. */
export class OciLayoutReference {
  readonly kind = 'oci-layout' as const;

  constructor(
    readonly dir: string,
    /** The tag (ref.name annotation) to resolve; undefined means "latest, or the only image". */
    readonly tag: string | undefined,
    readonly digest: string | undefined,
  ) {}

  /** Round-trips through parseOciLayoutReference (a trailing ':' when the directory has a ':'). */
  toString(): string {
    if (this.digest !== undefined) return `${OCI_LAYOUT_PREFIX}${this.dir}@${this.digest}`;
    if (this.tag !== undefined) return `${OCI_LAYOUT_PREFIX}${this.dir}:${this.tag}`;
    return `${OCI_LAYOUT_PREFIX}${this.dir}${this.dir.includes(':') ? ':' : ''}`;
  }
}

export type ImageSource = RegistryReference | OciLayoutReference;

function fail(input: string, problem: string): never {
  throw new ImageReferenceError(`invalid image reference ${redactInput(input)}: ${problem}`);
}

function checkDigest(input: string, digest: string): string {
  if (!DIGEST_GRAMMAR.test(digest)) fail(input, 'digest must look like "sha256:<64 lowercase hex>"');
  try {
    parseDigest(digest);
  } catch (err) {
    if (!(err instanceof DigestFormatError)) throw err;
    const algorithm = digest.slice(0, digest.indexOf(':'));
    if (algorithm !== 'sha256' && algorithm !== 'sha512') fail(input, `unsupported digest algorithm "${algorithm}" (sha256 and sha512 are supported)`);
    fail(input, `bad ${algorithm} digest (want ${algorithm === 'sha256' ? 64 : 128} lowercase hex digits)`);
  }
  return digest;
}

/**
 * Parses a registry reference in the docker grammar. The first path component is a host when it contains
 * '.' or ':' or is "localhost" (unlike docker, an uppercase first component is reported as an uppercase
 * repository rather than taken for a host); otherwise the reference is on Docker Hub, where a
 * single-component name gets "library/". Without tag and digest the tag is "latest". A "docker://" prefix is
 * accepted and dropped.
 */
export function parseRegistryReference(input: string): RegistryReference {
  let text = input;
  if (text.startsWith(DOCKER_TRANSPORT_PREFIX)) text = text.slice(DOCKER_TRANSPORT_PREFIX.length);
  else if (URL_SCHEME.test(text)) fail(input, 'a reference has no URL scheme (write host/repository:tag)');
  if (text === '') fail(input, 'empty reference');

  let digest: string | undefined;
  const at = text.indexOf('@');
  if (at >= 0) {
    const after = text.slice(at + 1);
    if (after.includes('/') || !after.includes(':')) fail(input, 'misplaced "@" (credentials do not belong in a reference; a digest is "@sha256:<hex>")');
    digest = checkDigest(input, text.slice(at + 1));
    text = text.slice(0, at);
  }

  let tag: string | undefined;
  const colon = text.lastIndexOf(':');
  if (colon > text.lastIndexOf('/')) {
    tag = text.slice(colon + 1);
    text = text.slice(0, colon);
    if (!TAG.test(tag)) fail(input, `bad tag "${tag.slice(0, 140)}" (letters, digits, '_', '.', '-'; at most 128; not starting with '.' or '-')`);
  }
  if (text === '') fail(input, 'missing repository name');
  if (text.length > MAX_NAME_LENGTH) fail(input, `name longer than ${MAX_NAME_LENGTH} characters`);

  let registry = DOCKER_HUB_REGISTRY;
  let path = text;
  const slash = text.indexOf('/');
  if (slash >= 0) {
    const first = text.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost') {
      if (!DOMAIN.test(first)) fail(input, `bad registry host "${first}"`);
      registry = first;
      path = text.slice(slash + 1);
    }
  }
  if (DOCKER_HUB_ALIASES.includes(registry)) registry = DOCKER_HUB_REGISTRY;
  if (path === '') fail(input, 'missing repository name');
  for (const component of path.split('/')) {
    if (PATH_COMPONENT.test(component)) continue;
    if (component !== '' && PATH_COMPONENT.test(component.toLowerCase())) fail(input, 'repository name must be lowercase');
    fail(input, `bad repository path component "${component.slice(0, 140)}" (lowercase letters and digits, separated by '.', '_', '__' or '-')`);
  }
  if (registry === DOCKER_HUB_REGISTRY && !path.includes('/')) path = `${DOCKER_HUB_OFFICIAL_NAMESPACE}/${path}`;
  if (tag === undefined && digest === undefined) tag = DEFAULT_TAG;
  return new RegistryReference(registry, path, tag, digest);
}

/**
 * Parses `oci:DIR[:TAG]` or `oci:DIR@DIGEST`. The tag is the text after the last ':' when that text has no
 * '/'. A directory whose name contains ':' therefore needs an explicit tag (`oci:/data/a:b:latest`) or a
 * trailing ':' meaning "no tag" (`oci:/data/a:b:`), otherwise its last ':' part is read as a tag.
 */
export function parseOciLayoutReference(input: string): OciLayoutReference {
  if (!input.startsWith(OCI_LAYOUT_PREFIX)) fail(input, `a local layout starts with "${OCI_LAYOUT_PREFIX}"`);
  let text = input.slice(OCI_LAYOUT_PREFIX.length);
  let tag: string | undefined;
  let digest: string | undefined;
  const at = text.lastIndexOf('@');
  if (at >= 0 && DIGEST_GRAMMAR.test(text.slice(at + 1)) && !text.slice(at + 1).includes('/')) {
    digest = checkDigest(input, text.slice(at + 1));
    text = text.slice(0, at);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon >= 0 && !text.slice(colon + 1).includes('/')) {
      const candidate = text.slice(colon + 1);
      text = text.slice(0, colon);
      if (candidate !== '') {
        if (!LAYOUT_TAG.test(candidate)) fail(input, `bad tag "${candidate.slice(0, 140)}"`);
        tag = candidate;
      }
    }
  }
  if (text === '') fail(input, 'missing layout directory');
  return new OciLayoutReference(text, tag, digest);
}

/** Parses either syntax: `oci:…` for a layout directory, anything else as a registry reference. */
export function parseImageSource(input: string): ImageSource {
  return input.startsWith(OCI_LAYOUT_PREFIX) ? parseOciLayoutReference(input) : parseRegistryReference(input);
}

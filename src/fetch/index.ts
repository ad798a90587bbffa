// Public API of the fetch module: image references, platforms, the registry and OCI layout stores (with the
// registry client's retry, redirect and stats API), containerd-style hosts.toml endpoints (mirrors, TLS), and
// openImageStore() choosing between them.
export { openImageStore, type OpenImageStoreOptions } from './open.js';
export {
  DEFAULT_TAG,
  DOCKER_HUB_API_HOST,
  DOCKER_HUB_REGISTRY,
  OciLayoutReference,
  parseImageSource,
  parseOciLayoutReference,
  parseRegistryReference,
  RegistryReference,
  type ImageSource,
} from './reference.js';
export { formatPlatform, hostPlatform, normalizePlatform, parsePlatform, platformMatchRank, selectManifest } from './platform.js';
export {
  RegistryStore,
  type RegistryStoreOptions,
  type BlobReadOptions,
  MONOLITHIC_UPLOAD_MAX_BYTES,
  UPLOAD_CHUNK_BYTES,
  MAX_FETCH_BLOB_BYTES,
  REDIRECT_TARGET_TTL_MS,
  MAX_REDIRECT_TARGETS,
} from './registry.js';
export {
  API_PATH,
  DEFAULT_CAPABILITIES,
  DEFAULT_HOST_DIR_NAME,
  DEFAULT_HOSTS_DIR,
  HOSTS_FILE_NAME,
  HostsConfigError,
  defaultEndpoint,
  loadRegistryEndpoints,
  parseHostsToml,
  readEndpointTls,
  type EndpointTlsConfig,
  type EndpointTlsMaterial,
  type HostCapability,
  type LoadHostsOptions,
  type RegistryEndpoint,
} from './hosts.js';
export { OciLayoutStore, type OciLayoutStoreOptions, OCI_LAYOUT_VERSION, REF_NAME_ANNOTATION } from './ocilayout.js';
export {
  RegistryClient,
  RetryBudget,
  isLoopbackHost,
  registryScheme,
  parseRetryAfter,
  isRetryableStatus,
  type RegistryClientOptions,
  type RegistryClientStats,
  type RegistryClientEvent,
  type RetryPolicy,
  type HttpTimeouts,
  type EndpointSettings,
  type EndpointTls,
  MAX_AUTH_ROUNDS,
  MAX_REDIRECTS,
  MAX_RETRIES,
  RETRY_INITIAL_DELAY_MS,
  RETRY_MAX_DELAY_MS,
  RETRY_BACKOFF_FACTOR,
  RETRY_JITTER,
  MAX_RETRY_AFTER_MS,
} from './http.js';
export { RegistryAuthError } from './auth.js';
export {
  CredentialError,
  DockerCredentialStore,
  StaticCredentials,
  dockerConfigPath,
  normalizeRegistryHost,
  readDockerConfig,
  removeAuthEntry,
  saveAuthEntry,
  serverUrlFor,
  runCredentialHelper,
  type CredentialProvider,
  type DockerCredentialStoreOptions,
  type RegistryCredentials,
} from './credentials.js';
export { parseManifestDocument, type ManifestDocument, MAX_MANIFEST_BYTES } from './manifest.js';
export {
  ContentVerificationError,
  ImageReferenceError,
  ManifestFormatError,
  OciLayoutError,
  PlatformError,
  RegistryError,
  redactUrl,
} from './errors.js';

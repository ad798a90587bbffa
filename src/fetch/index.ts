// Public API of the fetch module: image references, platforms, the registry and OCI layout stores, and
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
export { RegistryStore, type RegistryStoreOptions, MONOLITHIC_UPLOAD_MAX_BYTES, UPLOAD_CHUNK_BYTES, MAX_FETCH_BLOB_BYTES } from './registry.js';
export { OciLayoutStore, type OciLayoutStoreOptions, OCI_LAYOUT_VERSION, REF_NAME_ANNOTATION } from './ocilayout.js';
export { RegistryClient, isLoopbackHost, registryScheme, type RegistryClientOptions, type HttpTimeouts, MAX_AUTH_ROUNDS } from './http.js';
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

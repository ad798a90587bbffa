// Entry point for callers: turns a source string into an ImageStore, an OCI layout for `oci:DIR[:TAG]` and a
// registry repository for anything else. Registry stores get credentials from the docker config
// (DockerCredentialStore) unless the caller gives others or none, and mirrors and per-endpoint TLS from a
// containerd-style hosts directory when one is given.
import type { ImageStore } from '../oci/store.js';
import type { Platform } from '../oci/types.js';
import { DockerCredentialStore, type CredentialProvider } from './credentials.js';
import type { RegistryClient } from './http.js';
import { OciLayoutStore } from './ocilayout.js';
import { parseImageSource } from './reference.js';
import { RegistryStore, type RegistryStoreOptions } from './registry.js';

export interface OpenImageStoreOptions {
  /** Plain HTTP to a registry that is not on loopback (loopback hosts always use HTTP). */
  plainHttp?: boolean;
  /** Default platform for resolve() when it is given none; the host's linux platform otherwise. */
  platform?: Platform;
  /** Share connections and tokens between registry stores; the caller closes it. */
  client?: RegistryClient;
  /** Registry tuning (timeouts, connections, upload chunking, fetchBlob cap). */
  registry?: Omit<RegistryStoreOptions, 'plainHttp' | 'platform' | 'client' | 'credentials'>;
  /**
   * Registry credentials: a provider, 'none' for anonymous access only, or (default) the docker config
   * (`$DOCKER_CONFIG/config.json` or `~/.docker/config.json` and its credential helpers). Ignored when
   * `client` is given (the client has its own).
   */
  credentials?: CredentialProvider | 'none';
  /**
   * containerd-style hosts directory (e.g. DEFAULT_HOSTS_DIR, /etc/containerd/certs.d): mirrors, TLS and
   * headers per registry from `<dir>/<registry>/hosts.toml` or `<dir>/_default/hosts.toml`. None by default.
   */
  hostsDir?: string;
}

/** Opens `oci:DIR[:TAG]` as an OCI image layout, anything else as a registry reference. */
export function openImageStore(ref: string, options: OpenImageStoreOptions = {}): ImageStore {
  const source = parseImageSource(ref);
  if (source.kind === 'oci-layout') {
    return new OciLayoutStore(source, options.platform !== undefined ? { platform: options.platform } : {});
  }
  const registryOptions: RegistryStoreOptions = { ...options.registry };
  if (options.plainHttp !== undefined) registryOptions.plainHttp = options.plainHttp;
  if (options.platform !== undefined) registryOptions.platform = options.platform;
  if (options.hostsDir !== undefined) registryOptions.hostsDir = options.hostsDir;
  if (options.client !== undefined) registryOptions.client = options.client;
  else if (options.credentials !== 'none') registryOptions.credentials = options.credentials ?? new DockerCredentialStore();
  return new RegistryStore(source, registryOptions);
}

// Errors of containerd API calls: the gRPC status code (containerd maps its errdefs onto them:
// NotFound, AlreadyExists, FailedPrecondition, Unavailable...) with the method that failed.
import { status as GrpcStatus } from '@grpc/grpc-js';
import type { ServiceError } from '@grpc/grpc-js';

export class ContainerdError extends Error {
  override name = 'ContainerdError';
  /** The gRPC status code (grpc-js `status`). */
  readonly code: GrpcStatus;
  /** "Service/Method", e.g. "Snapshots/Prepare". */
  readonly method: string;

  constructor(method: string, code: GrpcStatus, details: string, options?: { cause?: unknown }) {
    super(`containerd ${method}: ${details || GrpcStatus[code] || `status ${code}`}`, options);
    this.code = code;
    this.method = method;
  }

  get codeName(): string {
    return GrpcStatus[this.code] ?? String(this.code);
  }
}

export function isServiceError(err: unknown): err is ServiceError {
  return err instanceof Error && typeof (err as Partial<ServiceError>).code === 'number' && 'metadata' in err;
}

/** grpc-js connection failures read "No connection established. Last error: Error: connect ENOENT /x. Resolution note: ". */
function cleanDetails(details: string): string {
  return details
    .replace(/^No connection established\. Last error: (Error: )?/, 'cannot connect: ')
    .replace(/\.?\s*Resolution note:\s*$/, '')
    .trim();
}

/** Wraps a grpc-js error (or anything else) into a ContainerdError for `method`. */
export function toContainerdError(method: string, err: unknown): ContainerdError {
  if (err instanceof ContainerdError) return err;
  if (isServiceError(err)) return new ContainerdError(method, err.code, cleanDetails(err.details || err.message));
  const message = err instanceof Error ? err.message : String(err);
  return new ContainerdError(method, GrpcStatus.UNKNOWN, message, { cause: err });
}

export function hasCode(err: unknown, code: GrpcStatus): boolean {
  return err instanceof ContainerdError ? err.code === code : isServiceError(err) && err.code === code;
}

export const isNotFound = (err: unknown): boolean => hasCode(err, GrpcStatus.NOT_FOUND);
export const isAlreadyExists = (err: unknown): boolean => hasCode(err, GrpcStatus.ALREADY_EXISTS);

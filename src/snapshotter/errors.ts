// Errors of the snapshotter with the errdefs class containerd expects for each: the gRPC glue turns the
// class into the status code (NOT_FOUND, ALREADY_EXISTS, FAILED_PRECONDITION, INVALID_ARGUMENT) that
// containerd's client maps back to errdefs.
export type SnapshotErrorCode = 'not-found' | 'already-exists' | 'failed-precondition' | 'invalid-argument' | 'unavailable';

export class SnapshotError extends Error {
  override name = 'SnapshotError';
  constructor(
    readonly code: SnapshotErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function notFound(message: string): SnapshotError {
  return new SnapshotError('not-found', message);
}

export function alreadyExists(message: string): SnapshotError {
  return new SnapshotError('already-exists', message);
}

export function failedPrecondition(message: string): SnapshotError {
  return new SnapshotError('failed-precondition', message);
}

export function invalidArgument(message: string): SnapshotError {
  return new SnapshotError('invalid-argument', message);
}

export { errorMessage } from '../util/errors.js';

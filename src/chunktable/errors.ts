// Typed errors of the seekable EROFS reader (spec §10). Every format violation found while parsing or decoding
// untrusted input (annotations, chunk table, data frames, whole blobs) is a SeekableFormatError carrying the
// number of the §10 rule it breaks.
//
// Error policy of src/chunktable (all readers: annotations, table, frame, range, decoder):
//   - SeekableFormatError: any malformed input, including the whole-blob checks of rule 18 (size, DiffID,
//     blob digest) and the "lazy serving needs a per-chunk anchor" refusal of rule 19.
//   - IntegrityError (src/verity/digests.ts), NOT wrapped: a chunk table payload whose SHA-512 differs from the
//     chunk_digest annotation (rule 6, subject 'chunk-table') or a data frame whose SHA-512 differs from its
//     table entry (rule 14, subject 'frame'). It is kept distinct because it means "bytes were altered in
//     transit or storage" (worth a re-fetch), not "the producer wrote a bad blob".
//   - Caller mistakes that do not depend on input bytes (a negative range offset, a chunk index out of range,
//     bad encoder options) throw RangeError/TypeError; I/O errors of caller-supplied readers and streams pass
//     through unchanged.
// isSeekableReadError() tells the two input-caused classes apart from everything else.
import { IntegrityError } from '../verity/digests.js';

/** First and last rule numbers of spec §10. */
export const FIRST_RULE = 1;
export const LAST_RULE = 21;

/** Which part of the format a §10 rule concerns (used as the message prefix). */
function ruleArea(rule: number): string {
  if (rule <= 3) return 'annotation';
  if (rule <= 12) return 'chunk table';
  if (rule <= 19) return 'data frame';
  return 'dm-verity';
}

/** A seekable EROFS blob, chunk table, frame or annotation that violates spec §10 item `rule`. */
export class SeekableFormatError extends Error {
  override name = 'SeekableFormatError';
  /** The spec §10 item number (1–21) that the input violates. */
  readonly rule: number;

  constructor(rule: number, detail: string, options?: { cause?: unknown }) {
    if (!Number.isInteger(rule) || rule < FIRST_RULE || rule > LAST_RULE) {
      throw new RangeError(`SeekableFormatError: rule ${rule} is not a spec §10 item (${FIRST_RULE}-${LAST_RULE})`);
    }
    super(`${ruleArea(rule)} rule ${rule}: ${detail}`, options);
    this.rule = rule;
  }
}

/** True for the two error classes that malformed or tampered input can produce (see the policy above). */
export function isSeekableReadError(err: unknown): err is SeekableFormatError | IntegrityError {
  return err instanceof SeekableFormatError || err instanceof IntegrityError;
}

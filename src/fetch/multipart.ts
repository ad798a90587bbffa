// Parser of `multipart/byteranges` bodies (RFC 9110 §14.6), the answer to a multi-range request. Each part
// carries its own Content-Range; its data length is taken from that header, never found by searching for the
// boundary, so binary data that happens to contain the boundary cannot confuse it. Anything unexpected is a
// MultipartError naming the offset where the body stopped making sense.

/** Longest header block accepted for one part. */
export const MAX_PART_HEADER_BYTES = 4096;

export class MultipartError extends Error {
  override name = 'MultipartError';
}

export interface BytePart {
  /** First byte of the blob in this part. */
  start: number;
  /** One past the last byte. */
  end: number;
  /** Total blob size from the Content-Range (`*` → undefined). */
  size: number | undefined;
  data: Buffer;
}

/** The boundary of a `multipart/byteranges` Content-Type, or undefined when the type is something else. */
export function byterangesBoundary(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const [type, ...params] = contentType.split(';');
  if (type!.trim().toLowerCase() !== 'multipart/byteranges') return undefined;
  for (const param of params) {
    const eq = param.indexOf('=');
    if (eq < 0) continue;
    if (param.slice(0, eq).trim().toLowerCase() !== 'boundary') continue;
    let value = param.slice(eq + 1).trim();
    if (value.startsWith('"') && value.endsWith('"') && value.length >= 2) value = value.slice(1, -1);
    // RFC 2046: 1 to 70 characters.
    if (value.length === 0 || value.length > 70) throw new MultipartError(`multipart boundary of ${value.length} characters`);
    return value;
  }
  throw new MultipartError('multipart/byteranges without a boundary parameter');
}

/** Parses `bytes A-B/SIZE` (or `bytes A-B/*`) into [A, B+1) and SIZE. */
export function parseContentRange(value: string): { start: number; end: number; size: number | undefined } | undefined {
  const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(value.trim());
  if (!m) return undefined;
  const start = Number(m[1]);
  const last = Number(m[2]);
  const size = m[3] === '*' ? undefined : Number(m[3]);
  if (!Number.isSafeInteger(start) || !Number.isSafeInteger(last) || last < start) return undefined;
  if (size !== undefined && (!Number.isSafeInteger(size) || last >= size)) return undefined;
  return { start, end: last + 1, size };
}

const CRLF = Buffer.from('\r\n');
const HEADER_END = Buffer.from('\r\n\r\n');

/** Splits a whole multipart/byteranges body into its parts, in body order. */
export function parseByteranges(body: Buffer, boundary: string): BytePart[] {
  const delimiter = Buffer.from(`--${boundary}`);
  const parts: BytePart[] = [];
  // A preamble before the first delimiter is allowed (and ignored).
  let pos = body.indexOf(delimiter);
  if (pos < 0) throw new MultipartError('no multipart boundary in the body');
  for (;;) {
    pos += delimiter.length;
    if (body.subarray(pos, pos + 2).toString('latin1') === '--') return parts;
    // Transport padding (spaces, tabs) may follow a delimiter before its CRLF.
    while (body[pos] === 0x20 || body[pos] === 0x09) pos++;
    if (!body.subarray(pos, pos + 2).equals(CRLF)) throw new MultipartError(`expected CRLF after the boundary at offset ${pos}`);
    pos += 2;
    const headerEnd = body.indexOf(HEADER_END, pos);
    // A part with no header lines at all starts its data right after the CRLF; byteranges parts need Content-Range.
    if (headerEnd < 0 || headerEnd - pos > MAX_PART_HEADER_BYTES) throw new MultipartError(`part headers at offset ${pos} do not end`);
    let range: ReturnType<typeof parseContentRange>;
    for (const line of body.subarray(pos, headerEnd).toString('latin1').split('\r\n')) {
      const colon = line.indexOf(':');
      if (colon < 0) throw new MultipartError(`malformed part header line at offset ${pos}`);
      if (line.slice(0, colon).trim().toLowerCase() !== 'content-range') continue;
      range = parseContentRange(line.slice(colon + 1));
      if (!range) throw new MultipartError(`bad part Content-Range ${JSON.stringify(line.slice(colon + 1).trim())} at offset ${pos}`);
    }
    if (!range) throw new MultipartError(`part at offset ${pos} has no Content-Range`);
    pos = headerEnd + HEADER_END.length;
    const length = range.end - range.start;
    if (pos + length > body.length) throw new MultipartError(`part ${range.start}-${range.end - 1} is cut at offset ${body.length}`);
    parts.push({ ...range, data: body.subarray(pos, pos + length) });
    pos += length;
    if (!body.subarray(pos, pos + 2).equals(CRLF) || !body.subarray(pos + 2, pos + 2 + delimiter.length).equals(delimiter)) {
      throw new MultipartError(`part ${range.start}-${range.end - 1} is not followed by the boundary (offset ${pos})`);
    }
    pos += 2;
  }
}

/**
 * The bytes of each wanted range [start, end) out of the parts that cover it (a server may merge or reorder
 * ranges); undefined for a range no single part covers.
 */
export function sliceRanges(parts: readonly BytePart[], wanted: readonly { start: number; end: number }[]): (Buffer | undefined)[] {
  return wanted.map(({ start, end }) => {
    const part = parts.find((p) => p.start <= start && end <= p.end);
    return part?.data.subarray(start - part.start, end - part.start);
  });
}

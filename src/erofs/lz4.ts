// A small LZ4 block-format decompressor for EROFS pclusters (lz4 and lz4hc write the same block format). It
// writes into an output of a fixed size and stops there, so a stream cannot produce more than was asked for;
// every literal run and match is bounds-checked, and a malformed stream is an ErofsFormatError at the given
// image offset. Written here rather than taken from npm: the block format is ~60 lines, and the npm ports are
// either native addons or unmaintained, and none reports malformed input as a typed error.
import { ErofsFormatError } from './errors.js';

/** Bytes of the minimum match. */
const MIN_MATCH = 4;

/**
 * Decompresses LZ4 block `input` into exactly `outputSize` bytes. Decoding stops once the output is full
 * (trailing input is ignored: EROFS pclusters without zero padding carry garbage after the stream); an input
 * that ends before the output is full is an error. `offset` is the image offset of `input`, for errors.
 */
export function lz4DecompressBlock(input: Uint8Array, outputSize: number, offset: number): Buffer {
  const out = Buffer.alloc(outputSize);
  const fail = (at: number, why: string): ErofsFormatError => new ErofsFormatError('lz4', offset + at, `LZ4 stream: ${why}`);
  let ip = 0;
  let op = 0;
  const iend = input.length;
  while (op < outputSize) {
    if (ip >= iend) throw fail(ip, `input ended after ${op} of ${outputSize} output bytes`);
    const token = input[ip++]!;
    let litLen = token >>> 4;
    if (litLen === 15) {
      let b: number;
      do {
        if (ip >= iend) throw fail(ip, 'truncated literal length');
        b = input[ip++]!;
        litLen += b;
      } while (b === 255);
    }
    if (litLen > 0) {
      if (ip + litLen > iend) throw fail(ip, `literal run of ${litLen} bytes runs past the input`);
      const n = Math.min(litLen, outputSize - op);
      out.set(input.subarray(ip, ip + n), op);
      op += n;
      ip += litLen;
      if (op >= outputSize) break;
    }
    if (ip >= iend) throw fail(ip, `input ended after ${op} of ${outputSize} output bytes`);
    if (ip + 2 > iend) throw fail(ip, 'truncated match offset');
    const distance = input[ip]! | (input[ip + 1]! << 8);
    ip += 2;
    if (distance === 0 || distance > op) throw fail(ip - 2, `match offset ${distance} points before the start of the output (at ${op})`);
    let matchLen = token & 15;
    if (matchLen === 15) {
      let b: number;
      do {
        if (ip >= iend) throw fail(ip, 'truncated match length');
        b = input[ip++]!;
        matchLen += b;
      } while (b === 255);
    }
    matchLen += MIN_MATCH;
    const n = Math.min(matchLen, outputSize - op);
    let from = op - distance;
    if (distance >= n) {
      out.copy(out, op, from, from + n);
      op += n;
    } else {
      // Overlapping match: byte by byte repeats the last `distance` bytes.
      const end = op + n;
      while (op < end) out[op++] = out[from++]!;
    }
  }
  return out;
}

// Body of one decode pool worker thread: verifies and decodes the frames sent by src/reader/decodepool.ts with
// a thread-local zstd context and sends back each decoded chunk (its memory transferred, with its SHA-256 when
// asked) or a flattened error, one answer per frame; or hashes bytes (a disk cache entry) and hands them back.
// Frames whose memory was transferred here are freed as soon as their request is done.
import { parentPort } from 'node:worker_threads';
import { FrameDecoder } from '../chunktable/frame.js';
import { decodeFrameJob, frameJobOf, releaseArrayBuffer, serializeError, sha256Of, transferableView } from './decodeprotocol.js';
import type { DecodeRequest, DecodeResponse } from './decodeprotocol.js';

const port = parentPort;
if (!port) throw new Error('decodeworker.js must run as a worker thread (it is started by DecodePool)');
const decoder = new FrameDecoder();

function framesRequest(request: Extract<DecodeRequest, { kind: 'frames' }>): void {
  const bytes = new Uint8Array(request.buffer, request.byteOffset, request.byteLength);
  request.frames.forEach((spec, part) => {
    let response: DecodeResponse;
    let transfer: ArrayBuffer[] = [];
    try {
      const data = decodeFrameJob(frameJobOf(bytes, spec, request.chunkSize), decoder);
      const view = transferableView(data);
      response = { id: request.id, part, ok: true, ...view };
      if (request.sha256) response.sha256 = sha256Of(data);
      transfer = [view.buffer];
    } catch (err) {
      response = { id: request.id, part, ok: false, error: serializeError(err) };
    }
    port!.postMessage(response, transfer);
  });
  if (request.release) releaseArrayBuffer(request.buffer);
}

function sha256Request(request: Extract<DecodeRequest, { kind: 'sha256' }>): void {
  let response: DecodeResponse;
  let transfer: ArrayBuffer[] = [];
  try {
    const bytes = new Uint8Array(request.buffer, request.byteOffset, request.byteLength);
    const sha256 = sha256Of(bytes.subarray(request.from));
    response = { id: request.id, part: 0, ok: true, buffer: request.buffer, byteOffset: request.byteOffset, byteLength: request.byteLength, sha256 };
    transfer = [request.buffer];
  } catch (err) {
    response = { id: request.id, part: 0, ok: false, error: serializeError(err) };
  }
  port!.postMessage(response, transfer);
}

port.on('message', (request: DecodeRequest) => {
  if (request.kind === 'frames') framesRequest(request);
  else sha256Request(request);
});

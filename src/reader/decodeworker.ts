// Body of one decode pool worker thread: verifies and decodes frames sent by src/reader/decodepool.ts with a
// thread-local zstd context, and sends back the decoded chunk (its memory transferred) or a flattened error.
import { parentPort } from 'node:worker_threads';
import { FrameDecoder } from '../chunktable/frame.js';
import { decodeFrameJob, serializeError, transferableView } from './decodeprotocol.js';
import type { DecodeRequest, DecodeResponse } from './decodeprotocol.js';

const port = parentPort;
if (!port) throw new Error('decodeworker.js must run as a worker thread (it is started by DecodePool)');
const decoder = new FrameDecoder();

port.on('message', (request: DecodeRequest) => {
  let response: DecodeResponse;
  let transfer: ArrayBuffer[] = [];
  try {
    const frame = new Uint8Array(request.buffer, request.byteOffset, request.byteLength);
    const data = decodeFrameJob(
      {
        index: request.index,
        frame,
        frameStart: request.frameStart,
        frameEnd: request.frameEnd,
        checksum: request.checksum,
        chunkLength: request.chunkLength,
        chunkSize: request.chunkSize,
        context: request.context,
      },
      decoder,
    );
    const view = transferableView(data);
    response = { id: request.id, ok: true, ...view };
    transfer = [view.buffer];
  } catch (err) {
    response = { id: request.id, ok: false, error: serializeError(err) };
  }
  port.postMessage(response, transfer);
});

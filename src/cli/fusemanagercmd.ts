// What the hidden `erofs-lazy serve-fuse-manager` does (options in serve.ts): the detached process that
// `serve` starts to keep the layers' FUSE mounts alive across a serve crash (src/snapshotter/fusemanager.ts).
// A module of its own so that this process does not load serve's gRPC server.
import { resolve } from 'node:path';
import { notifyParent } from '../mount/daemon.js';
import { runFuseManager } from '../snapshotter/fusemanager.js';
import { oneLineError, timestampedLog } from './output.js';

export async function runFuseManagerCommand(args: { root: string; 'ready-fd'?: number }): Promise<void> {
  const readyFd = args['ready-fd'];
  let code: number;
  try {
    code = await runFuseManager(resolve(args.root), timestampedLog, async (pid) => {
      if (readyFd !== undefined) await notifyParent(readyFd, { ready: true, pid });
    });
  } catch (err) {
    if (readyFd !== undefined) await notifyParent(readyFd, { error: oneLineError(err) });
    throw err;
  }
  timestampedLog('FUSE manager stopped');
  process.exit(code);
}

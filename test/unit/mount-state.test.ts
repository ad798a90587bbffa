// processAlive: live processes are alive; gone and zombie (exited, unreaped) ones are not, so that umount does not
// wait on a serving process that has already exited.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { test } from 'node:test';
import { processAlive } from '../../src/mount/state.js';

test('processAlive: this process yes, no pid or a finished one no', async () => {
  assert.equal(processAlive(process.pid), true);
  assert.equal(processAlive(undefined), false);
  const child = spawn('true');
  await once(child, 'exit');
  assert.equal(processAlive(child.pid), false);
});

test('processAlive: a zombie is not alive, though kill(pid, 0) still succeeds on it', async (t) => {
  // The shell starts a short sleep, prints its pid, then becomes a long sleep that never reaps it.
  const parent = spawn('sh', ['-c', 'sleep 0.1 & echo $!; exec sleep 30'], { stdio: ['ignore', 'pipe', 'ignore'] });
  t.after(() => parent.kill('SIGKILL'));
  const [line] = (await once(parent.stdout!, 'data')) as [Buffer];
  const zombie = Number(line.toString().trim());
  assert.ok(Number.isInteger(zombie) && zombie > 0);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.doesNotThrow(() => process.kill(zombie, 0), 'the zombie still has its pid');
  assert.equal(processAlive(zombie), false);
  assert.equal(processAlive(parent.pid), true);
});

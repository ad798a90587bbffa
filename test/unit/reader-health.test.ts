import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RegistryHealth, RegistryUnavailableError } from '../../src/reader/health.js';

test('registry health: down after a failure, one probe per interval, up again on success', async () => {
  let now = 1_000;
  const health = new RegistryHealth(500, () => now);
  assert.equal(await health.admit('chunk 1'), 'normal');
  health.markDown(new Error('connect ECONNREFUSED'));
  assert.equal(health.down, true);
  await assert.rejects(health.admit('chunk 2'), (err: Error) => err instanceof RegistryUnavailableError && /ECONNREFUSED/.test(err.message));
  now += 500;
  assert.equal(await health.admit('chunk 3'), 'probe');
  // A fetch arriving while the probe is out waits for it, then fails with the probe's error.
  const waiting = health.admit('chunk 4', new AbortController().signal);
  health.markDown(new Error('still refused'));
  await assert.rejects(waiting, /still refused/);
  await assert.rejects(health.admit('chunk 5'), /still refused/);
  now += 500;
  assert.equal(await health.admit('chunk 6'), 'probe');
  const waitingForSuccess = health.admit('chunk 7');
  health.markUp();
  assert.equal(await waitingForSuccess, 'normal', 'waiters proceed normally once the probe succeeds');
  assert.equal(health.down, false);
  assert.equal(await health.admit('chunk 8'), 'normal');
  const aborted = new AbortController();
  health.markDown(new Error('down again'));
  now += 500;
  assert.equal(await health.admit('chunk 9'), 'probe');
  const bounded = health.admit('chunk 10', aborted.signal);
  aborted.abort(new Error('deadline'));
  await assert.rejects(bounded, /deadline/, 'a waiter gives up at its own deadline');
  health.markUp();
  assert.equal(health.trips, 2);
});

test('registry health: while down, fetches fail at once until the probe time, then one probes', async () => {
  let now = 0;
  const health = new RegistryHealth(50, () => now);
  health.markDown(new Error('connect ECONNREFUSED'));
  await assert.rejects(health.admit('chunk 1', new AbortController().signal), RegistryUnavailableError, 'no waiting before the probe time');
  now = 50;
  assert.equal(await health.admit('chunk 2', new AbortController().signal), 'probe');
  const waiter = health.admit('chunk 3', new AbortController().signal);
  health.markDown(new Error('refused again'));
  await assert.rejects(waiter, /refused again/, 'waiters of a failed probe fail at once');
});

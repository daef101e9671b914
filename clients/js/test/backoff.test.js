import assert from 'node:assert/strict';
import test from 'node:test';
import { backoffCeiling, backoffDelay } from '../src/index.js';

test('the ceiling doubles from initialMs and stops at capMs', () => {
  const ceilings = Array.from({ length: 10 }, (_, n) => backoffCeiling(n));
  assert.deepEqual(ceilings, [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000, 30000]);
  assert.equal(backoffCeiling(5000), 30000); // 2^5000 is Infinity: still the cap
  assert.equal(backoffCeiling(3, { initialMs: 100, capMs: 1000 }), 800);
});

test('full jitter: every delay lies in [0, min(cap, initial * 2^n)]', () => {
  for (let n = 0; n < 40; n += 1) {
    const ceiling = Math.min(30_000, 500 * 2 ** n);
    for (let i = 0; i < 200; i += 1) {
      const delay = backoffDelay(n);
      assert.ok(delay >= 0 && delay <= ceiling, `attempt ${n}: ${delay} outside [0, ${ceiling}]`);
    }
  }
});

test('the jitter spans the whole window, from zero to the ceiling', () => {
  assert.equal(backoffDelay(4, {}, () => 0), 0);
  assert.equal(backoffDelay(4, {}, () => 0.5), 4000);
  assert.ok(backoffDelay(4, {}, () => 0.999999) > 7999);
  const delays = Array.from({ length: 2000 }, () => backoffDelay(2));
  assert.ok(Math.min(...delays) < 200 && Math.max(...delays) > 1800, 'not spread over [0, 2000]');
});

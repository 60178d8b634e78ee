// Every example under examples/ runs here, against the real /dev/kvm, so
// the examples in the docs cannot rot.
import { describe, expect, test } from 'vitest';
import { main as hello, MESSAGE } from '../examples/hello-real-mode.js';
import { main as longMode } from '../examples/long-mode-guest-memfd.js';
import { DATA_GPA, main as punchHole } from '../examples/punch-hole.js';

describe('examples', () => {
  test('hello-real-mode prints its message through port 0x3f8 and halts', () => {
    expect(hello()).toBe(MESSAGE);
  });

  test('long-mode-guest-memfd runs a 64-bit guest from guest_memfd memory', async () => {
    const r = await longMode();
    expect(r.prints).toEqual([5050n]);
    expect(r.syncs).toEqual([]);
  });

  test(`punch-hole: the guest reads zeros at 0x${DATA_GPA.toString(16)} after the host punched it`, async () => {
    const r = await punchHole();
    expect(r.syncs).toEqual([1]);
    expect(r.prints).toEqual([0n]);
  });
});

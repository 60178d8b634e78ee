// Every example under examples/ runs here, against the real /dev/kvm, so
// the examples in the docs cannot rot.
import { describe, expect, test } from 'vitest';
import { main as hello, MESSAGE } from '../examples/hello-real-mode.js';
import { main as longMode } from '../examples/long-mode-guest-memfd.js';
import { DATA_GPA, main as punchHole } from '../examples/punch-hole.js';
import { gate, needs, pickVmType } from './helpers.js';

// Both guest_memfd examples take the 'sw-protected' VM where offered, else
// the default one; a guest runs from guest_memfd memory where that VM's
// guest_memfd has mmap and init-shared, or the VM has private memory.
const gmemGuest = gate(
  pickVmType('a VM type whose guest_memfd a guest can run from (KVM_CAP_GUEST_MEMFD with mmap and init-shared, or with PRIVATE attributes)', (t) =>
    needs.all('', needs.cap('GUEST_MEMFD', t), needs.any('', needs.gmemFlags(['mmap', 'init-shared'], t), needs.memoryAttributes('private', t))),
  ).need,
);

describe('examples', () => {
  test('hello-real-mode prints its message through port 0x3f8 and halts', () => {
    expect(hello()).toBe(MESSAGE);
  });

  gmemGuest.test('long-mode-guest-memfd runs a 64-bit guest from guest_memfd memory', async () => {
    const r = await longMode();
    expect(r.prints).toEqual([5050n]);
    expect(r.syncs).toEqual([]);
  });

  gmemGuest.test(`punch-hole: the guest reads zeros at 0x${DATA_GPA.toString(16)} after the host punched it`, async () => {
    const r = await punchHole();
    expect(r.syncs).toEqual([1]);
    expect(r.prints).toEqual([0n]);
  });
});

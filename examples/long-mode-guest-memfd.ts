// A 64-bit guest whose memory is a guest_memfd. On hosts whose guest_memfd
// has the mmap and init-shared flags (6.18), the file's own mapping is the
// memslot's shared backing, so every instruction runs from guest_memfd
// memory. The guest sums 1..100, reports the sum and checks it.
//
//   node dist/examples/long-mode-guest-memfd.js
import { pathToFileURL } from 'node:url';
import { Guest, Kvm, type RunResult } from '../lib/index.js';

export async function main(): Promise<RunResult> {
  using kvm = Kvm.open();
  const type = kvm.capabilities().vmTypes.includes('sw-protected') ? 'sw-protected' : 'default';
  using vm = kvm.createVm({ type });
  using guest = Guest.longMode(vm, {
    memory: { kind: 'guest-memfd' },
    code: (a, io) => {
      a.xor('eax', 'eax').mov('ecx', 100);
      a.label('loop').add('rax', 'rcx').dec('rcx').jnz('loop');
      io.print('rax');
      a.cmp('rax', 5050);
      io.assert('e', 1);
      io.done();
    },
  });
  return await guest.runUntilDone({ timeoutMs: 10_000 });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (r) => console.log(`guest printed ${r.prints.join(', ')} after ${r.exits} exits`),
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}

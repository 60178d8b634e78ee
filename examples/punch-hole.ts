// The host punches a page out of the guest's guest_memfd between two syncs:
// the guest wrote 0x1234 there, and after the punch it reads zero.
//
// On a VM type with private memory the page is first converted to private,
// since that is when the guest's accesses go to the guest_memfd; on 6.18
// hosts with guest_memfd mmap, every access already does.
//
//   node dist/examples/punch-hole.js
import { pathToFileURL } from 'node:url';
import { Guest, Kvm, mem, type RunResult } from '../lib/index.js';

export const DATA_GPA = 0x100000;

export async function main(): Promise<RunResult> {
  using kvm = Kvm.open();
  const type = kvm.capabilities().vmTypes.includes('sw-protected') ? 'sw-protected' : 'default';
  using vm = kvm.createVm({ type });
  using guest = Guest.longMode(vm, {
    memory: { kind: 'guest-memfd' },
    code: (a, io) => {
      a.mov(mem(64, { disp: DATA_GPA }), 0x1234);
      a.mov('rax', mem(64, { disp: DATA_GPA }));
      a.cmp('rax', 0x1234);
      io.assert('e', 1);
      io.sync(1);
      // The host punched the page: it reads as zero now.
      a.mov('rax', mem(64, { disp: DATA_GPA }));
      io.print('rax');
      a.cmp('rax', 0);
      io.assert('e', 2);
      io.done();
    },
  });
  if (vm.capabilities().memoryAttributes.private) vm.convert({ gpa: DATA_GPA, size: 4096 }, 'private');
  return await guest.runUntilDone({
    timeoutMs: 10_000,
    onSync: (n, g) => {
      if (n === 1) g.guestMemfd?.punchHole(DATA_GPA, 4096);
    },
  });
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then(
    (r) => console.log(`syncs ${r.syncs.join(', ')}; guest read ${r.prints.join(', ')} after the punch`),
    (e) => {
      console.error(e);
      process.exitCode = 1;
    },
  );
}

// Hello from real mode: the guest writes "Hello, KVM!" to port 0x3f8 one
// byte at a time and halts. The host collects the bytes from IO exits.
//
//   node dist/examples/hello-real-mode.js
import { pathToFileURL } from 'node:url';
import { Guest, Kvm, mem, offset } from '../lib/index.js';

export const MESSAGE = 'Hello, KVM!';

export function main(): string {
  using kvm = Kvm.open();
  using vm = kvm.createVm();
  using guest = Guest.realMode(vm, {
    memory: { size: 0x20000 },
    code: (a) => {
      a.mov('si', offset('msg')).mov('dx', 0x3f8);
      a.label('next').mov('al', mem(8, 'si'));
      a.cmp('al', 0).je('end');
      a.out('dx', 'al').inc('si').jmp('next');
      a.label('end').hlt();
      a.label('msg').db([...Buffer.from(MESSAGE), 0]);
    },
  });
  let out = '';
  for (;;) {
    const exit = guest.vcpu.runSync({ timeoutMs: 5000 });
    if (exit.kind === 'io' && exit.port === 0x3f8) out += String.fromCharCode(exit.data[0] ?? 0);
    else if (exit.kind === 'hlt') break;
    else throw new Error(`unexpected exit ${exit.kind}`);
  }
  return out;
}

if (process.argv[1] !== undefined && import.meta.url === pathToFileURL(process.argv[1]).href) console.log(main());

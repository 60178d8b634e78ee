// Guests built by Guest.realMode / Guest.longMode on both memory kinds, the
// ucall protocol (sync, print, assert, done), the errors runUntilDone()
// turns exits into, the host callbacks (onSync, onExit), the guest_memfd
// punch-hole flow, and conversions the guest drives: KVM_HC_MAP_GPA_RANGE
// hypercalls and memory-fault exits.
//
// On the development host (paravirtualized kvm_pvm) a guest's vmcall never
// reaches the host (see vcpu.test.ts), so guest-requested conversions stop
// there; the flows that need private memory run in the test VM on a
// 'sw-protected' VM.
import { describe, expect, onTestFailed, test, vi } from 'vitest';
import {
  AttributeRuleError,
  type Assembler,
  type Capabilities,
  ExitReason,
  Guest,
  GuestAssertError,
  type GuestIo,
  type GuestOptions,
  GuestTimeoutError,
  mem,
  MissingCapabilityError,
  type RunResult,
  UnexpectedExitError,
  type VcpuExit,
  type Vm,
  type VmTypeName,
} from '../lib/index.js';
import { gate, hostCaps, needs, newVm, pickVmType, rejection, u64 } from './helpers.js';

const kvmPvm = needs.kvmModule('kvm_pvm');
const mappable = (c: Capabilities) => c.guestMemfdFlags.includes('mmap') && c.guestMemfdFlags.includes('init-shared');
const mappableOn = (t: VmTypeName) => needs.gmemFlags(['mmap', 'init-shared'], t);
const privateOn = (t: VmTypeName) => needs.memoryAttributes('private', t);

// A VM type on which a guest runs from guest_memfd memory: the default VM
// here (guest_memfd mmap + init-shared), 'sw-protected' in the test VM.
const gmem = pickVmType('a VM type whose guest_memfd a guest can run from (KVM_CAP_GUEST_MEMFD with mmap and init-shared, or with PRIVATE attributes)', (t) =>
  needs.all('', needs.cap('GUEST_MEMFD', t), needs.any('', mappableOn(t), privateOn(t))),
);
const gmemType = gmem.type;
const mappableVm = pickVmType('a VM type with KVM_CAP_GUEST_MEMFD and KVM_CAP_GUEST_MEMFD_FLAGS mmap|init-shared', (t) =>
  needs.all('', needs.cap('GUEST_MEMFD', t), mappableOn(t)),
);
const mappableType = mappableVm.type;
const privateVm = pickVmType("a VM type with KVM_CAP_MEMORY_ATTRIBUTES PRIVATE (a 'sw-protected' VM)", privateOn);
const privateType = privateVm.type;
// A VM type that offers neither (a default VM on 6.12): 'guest-memfd' must be refused there.
const noGmemVm = pickVmType('a VM type offering neither mmap|init-shared nor private memory (e.g. a default VM on 6.12)', (t) =>
  needs.all('', needs.not(mappableOn(t)), needs.not(privateOn(t))),
);
const noGmemType = noGmemVm.type;
const mapGpaRangeExit = needs.exitHypercall(12, 'default');
const defaultVmPrivate = privateOn('default');

// Guest data pages: below the real-mode stack's 64 KiB segment, and at 1 MiB for 64-bit guests.
const REAL_DATA = 0x9000;
const DATA = 0x10_0000;

/** Builds a guest and prints its listing if the test fails. */
function build(mode: 'real' | 'long', vm: Vm, options: GuestOptions): Guest {
  const g = mode === 'real' ? Guest.realMode(vm, options) : Guest.longMode(vm, options);
  onTestFailed(() => console.log(`guest listing:\n${g.listing}`));
  return g;
}

function long(vm: Vm, code: (a: Assembler, io: GuestIo) => void): Guest {
  return build('long', vm, { code });
}

/** KVM_HC_MAP_GPA_RANGE(gpa, npages, private ? ENCRYPTED : 0); asserts `code` unless RAX is 0. */
function mapGpaRange(a: Assembler, io: GuestIo, gpa: number, npages: number, toPrivate: boolean, code: number): void {
  a.mov('eax', 12)
    .mov('ebx', gpa)
    .mov('ecx', npages)
    .mov('edx', toPrivate ? 0x10 : 0);
  a.vmcall();
  a.cmp('rax', 0);
  io.assert('e', code);
}

describe('Guest.realMode and Guest.longMode on both memory kinds', () => {
  for (const mode of ['real', 'long'] as const) {
    for (const kind of ['anonymous', 'guest-memfd'] as const) {
      gate(...(kind === 'guest-memfd' ? [gmem.need] : [])).test(
        `${mode}-mode guest, ${kind} memory: computes, stores, prints, syncs and finishes`,
        async () => {
          using h = newVm(kind === 'guest-memfd' ? gmemType : 'default');
          const data = mode === 'real' ? REAL_DATA : DATA;
          using g = build(mode, h.vm, {
            memory: { kind },
            code: (a, io) => {
              a.mov('ecx', 100).xor('eax', 'eax');
              a.label('sum').add('eax', 'ecx').dec('ecx').jnz('sum');
              a.mov(mem(32, { disp: data }), 'eax');
              io.print(mode === 'real' ? 'eax' : 'rax');
              io.sync(1);
              io.done();
            },
          });
          expect(g.mode).toBe(mode);
          const r = await g.runUntilDone();
          expect(r).toEqual({ syncs: [1], prints: [5050n], printed: [], exits: 3, resumedMmioWrites: 0, conversions: [] });
          expect(u64(g.view(data, 8))).toBe(5050n);
          expect(g.memslot.gpa).toBe(0);
          expect(g.memslot.size).toBe(2 << 20);
          if (kind === 'anonymous') {
            expect(g.guestMemfd).toBeNull();
            expect(g.memslot.backing).toBe('anonymous');
          } else {
            const gmem = g.guestMemfd!;
            expect(g.memslot.guestMemfd).toBe(gmem);
            expect(gmem.boundRanges()).toEqual([{ slot: g.memslot.slot, addressSpace: 0, offset: 0, size: 2 << 20, gpa: 0 }]);
            const runsFromGmem = mappable(h.vm.capabilities());
            expect(g.memslot.backing).toBe(runsFromGmem ? 'guest-memfd' : 'anonymous');
            // Where the guest_memfd is the shared backing, its own mapping shows what the guest stored.
            if (runsFromGmem) expect(u64(gmem.map().bytes(data, 8))).toBe(5050n);
          }
        },
      );
    }
  }

  gate(noGmemVm.need).test(
    "'guest-memfd' memory where the VM offers neither mmap|init-shared nor private memory: MissingCapabilityError, nothing left behind",
    () => {
      using h = newVm(noGmemType);
      expectNoGmemGuest(h.vm);
    },
  );

  test("'guest-memfd' memory refused the same way when capabilities() answers as a 6.12 default VM does (mocked)", () => {
    using h = newVm();
    const real = h.vm.capabilities();
    vi.spyOn(h.vm, 'capabilities').mockReturnValue({ ...real, guestMemfdFlags: [], guestMemfdFlagBits: 0, memoryAttributes: { private: false, bits: 0 } });
    expectNoGmemGuest(h.vm);
  });

  function expectNoGmemGuest(vm: Vm): void {
    for (const make of [(v: Vm, o: GuestOptions) => Guest.realMode(v, o), (v: Vm, o: GuestOptions) => Guest.longMode(v, o)]) {
      let err: unknown;
      try {
        make(vm, { memory: { kind: 'guest-memfd' }, code: (_a, io) => io.done() }).close();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(MissingCapabilityError);
      expect((err as MissingCapabilityError).capability).toBe('KVM_CAP_GUEST_MEMFD_FLAGS');
      expect((err as MissingCapabilityError).since).toBe('6.18');
      expect(vm.memslots()).toEqual([]);
      expect(vm.guestMemfds()).toEqual([]);
    }
  }
});

describe('the ucall protocol', () => {
  test('sync(n) in sequence: onSync sees each n before the guest goes on; done() ends the run', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      io.sync(1).sync(2);
      a.mov('eax', 3);
      io.sync(3);
      io.done();
    });
    const seen: number[] = [];
    const r = await g.runUntilDone({ onSync: (n) => void seen.push(n) });
    expect(seen).toEqual([1, 2, 3]);
    expect(r).toEqual({ syncs: [1, 2, 3], prints: [], printed: [], exits: 4, resumedMmioWrites: 0, conversions: [] });
  });

  test('64-bit print(): immediates and registers, including the argument registers themselves', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      io.print(0).print(42).print(0x7fff_ffff).print(-1);
      a.mov('rax', 0x1122_3344_5566_7788n).mov('r8', 0x8888n).mov('rsi', 0x5151n).mov('rcx', 0xc1c1n);
      io.print('rax').print('r8').print('rsi').print('rcx');
      io.done();
    });
    const r = await g.runUntilDone();
    expect(r.prints).toEqual([0n, 42n, 0x7fff_ffffn, 0xffff_ffff_ffff_ffffn, 0x1122_3344_5566_7788n, 0x8888n, 0x5151n, 0xc1c1n]);
  });

  test('real-mode print(): immediates, 32-bit registers, and a 16-bit register zero-extended', async () => {
    using h = newVm();
    using g = build('real', h.vm, {
      code: (a, io) => {
        io.print(0x4242);
        a.mov('eax', 0x1234_5678).mov('esi', 0x1234_beef).mov('ecx', 0xc1c1);
        io.print('eax').print('si').print('esi').print('ecx');
        io.sync(7);
        io.done();
      },
    });
    const r = await g.runUntilDone();
    expect(r.prints).toEqual([0x4242n, 0x1234_5678n, 0xbeefn, 0x1234_beefn, 0xc1c1n]);
    expect(r.syncs).toEqual([7]);
  });

  for (const mode of ['real', 'long'] as const) {
    test(`${mode} mode: print() preserves the registers it uses; the guest computes with them afterwards`, async () => {
      using h = newVm();
      const [ax, cx, dx, si] = mode === 'long' ? (['rax', 'rcx', 'rdx', 'rsi'] as const) : (['eax', 'ecx', 'edx', 'esi'] as const);
      using g = build(mode, h.vm, {
        code: (a, io) => {
          a.mov(ax, 0x1000_0001).mov(cx, 0x200).mov(dx, 0x30).mov(si, 4);
          io.print(ax).print(cx).print(dx).print(si).print(7);
          io.sync(1);
          a.add(ax, cx).add(ax, dx).add(ax, si);
          io.print(ax);
          a.cmp(ax, 0x1000_0235);
          io.assert('e', 1);
          io.done();
        },
      });
      const r = await g.runUntilDone();
      expect(r.prints).toEqual([0x1000_0001n, 0x200n, 0x30n, 4n, 7n, 0x1000_0235n]);
    });
  }

  test('an unknown ucall command: UnexpectedExitError showing the IO exit on the ucall port', async () => {
    using h = newVm();
    using g = long(h.vm, (a) => {
      a.mov('eax', 99).mov('dx', 0x1000).out('dx', 'eax');
      a.hlt();
    });
    const e = await rejection(g.runUntilDone(), UnexpectedExitError);
    expect(e.exit).toMatchObject({ kind: 'io', direction: 'out', port: 0x1000, size: 4 });
    expect(e.code).toBe('ERR_KVM_UNEXPECTED_EXIT');
  });
});

describe('runUntilDone() errors', () => {
  test('a failing guest assert: GuestAssertError with the assert code, the rip of the assert and the syncs so far', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      io.sync(1).sync(2);
      a.mov('rax', 1).cmp('rax', 2);
      a.label('assert');
      io.assert('e', 7);
      a.label('after');
      io.done();
    });
    const e = await rejection(g.runUntilDone(), GuestAssertError);
    expect(e.assertCode).toBe(7);
    expect(e.syncs).toEqual([1, 2]);
    expect(e.code).toBe('ERR_KVM_GUEST_ASSERT');
    // At the OUT of the assert's ucall, or just past it (kvm_pvm advances RIP before the exit).
    expect(e.rip).toBeGreaterThan(BigInt(g.label('assert')));
    expect(e.rip).toBeLessThan(BigInt(g.label('after')));
    expect(e.message).toContain('guest assert 7 failed');
    expect(e.message).toContain(`0x${e.rip.toString(16)}`);
  });

  test('hlt before done(): UnexpectedExitError naming the exit and the rip after the hlt', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      io.sync(1);
      a.hlt();
      a.label('after');
      io.done();
    });
    const e = await rejection(g.runUntilDone(), UnexpectedExitError);
    expect(e.exit).toEqual({ kind: 'hlt', exitReason: ExitReason.HLT });
    expect(e.rip).toBe(BigInt(g.label('after')));
    expect(e.message).toContain(`unexpected hlt exit at rip 0x${g.label('after').toString(16)}`);
  });

  test('a spinning guest: GuestTimeoutError with its timeoutMs and the rip of the loop; the vCPU runs on afterwards', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      io.sync(1);
      a.label('spin').jmp('spin');
      a.label('finish');
      io.print(7);
      io.done();
    });
    const seen: number[] = [];
    const e = await rejection(g.runUntilDone({ timeoutMs: 200, onSync: (n) => void seen.push(n) }), GuestTimeoutError);
    expect(seen).toEqual([1]);
    expect(e.timeoutMs).toBe(200);
    expect(e.rip).toBe(BigInt(g.label('spin')));
    expect(e.code).toBe('ERR_KVM_GUEST_TIMEOUT');
    expect(g.vcpu.running).toBe(false);
    g.vcpu.updateRegs((r) => (r.rip = BigInt(g.label('finish'))));
    const r = await g.runUntilDone();
    expect(r.prints).toEqual([7n]);
  });

  test('timeoutMs as Vcpu.run reads it: 0 is no deadline (a kick is then an unexpected exit, not a timeout); negative, fractional or non-numbers are TypeErrors with a code', async () => {
    using h = newVm();
    using g = long(h.vm, (a) => {
      a.label('spin').jmp('spin');
    });
    const p = g.runUntilDone({ timeoutMs: 0 });
    setTimeout(() => g.vcpu.kick(), 50);
    const e = await rejection(p, UnexpectedExitError);
    expect(e.exit).toEqual({ kind: 'interrupted', exitReason: ExitReason.INTR, deadline: false });
    for (const [t, code] of [
      [-1, 'ERR_INVALID_ARG_VALUE'],
      [2.5, 'ERR_INVALID_ARG_VALUE'],
      [2 ** 31, 'ERR_INVALID_ARG_VALUE'],
      ['10', 'ERR_INVALID_ARG_TYPE'],
    ] as const) {
      const err = await g.runUntilDone({ timeoutMs: t as number }).then(
        () => null,
        (x: unknown) => x,
      );
      expect(err, String(t)).toBeInstanceOf(TypeError);
      expect(err, String(t)).toMatchObject({ code, message: expect.stringContaining('runUntilDone: timeoutMs') });
    }
  });
});

describe('host callbacks', () => {
  test('an async onSync that changes guest memory: the guest waits for it and reads the new value', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.mov(mem(64, { disp: DATA }), 0x1111);
      a.mov('rax', mem(64, { disp: DATA }));
      io.print('rax');
      io.sync(1);
      a.mov('rax', mem(64, { disp: DATA }));
      io.print('rax');
      io.done();
    });
    const r = await g.runUntilDone({
      onSync: async (n, guest) => {
        expect(n).toBe(1);
        expect(u64(guest.view(DATA, 8))).toBe(0x1111n);
        await new Promise((resolve) => setTimeout(resolve, 20));
        new DataView(guest.view(DATA, 8).buffer, guest.view(DATA, 8).byteOffset).setBigUint64(0, 0x2222n, true);
      },
    });
    expect(r.prints).toEqual([0x1111n, 0x2222n]);
  });

  test('onExit returning true handles a custom IO port (OUT collected, IN answered) and the run goes on', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.mov('dx', 0x2000).mov('eax', 0xaa).out('dx', 'eax').mov('eax', 0xbb).out('dx', 'eax');
      a.mov('dx', 0x2001).in('eax', 'dx');
      io.print('rax');
      io.done();
    });
    const outs: number[] = [];
    const r = await g.runUntilDone({
      onExit: (exit) => {
        if (exit.kind !== 'io' || (exit.port !== 0x2000 && exit.port !== 0x2001)) return false;
        const v = new DataView(exit.data.buffer, exit.data.byteOffset, 4);
        if (exit.direction === 'out') outs.push(v.getUint32(0, true));
        else v.setUint32(0, 0xcafe, true);
        return true;
      },
    });
    expect(outs).toEqual([0xaa, 0xbb]);
    expect(r.prints).toEqual([0xcafen]);
    expect(r.exits).toBe(5);
  });

  test('onExit returning false: UnexpectedExitError for that exit', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.mov('dx', 0x2000).mov('eax', 0xaa).out('dx', 'eax');
      io.done();
    });
    const seen: VcpuExit[] = [];
    const e = await rejection(g.runUntilDone({ onExit: (exit) => Promise.resolve((seen.push(exit), false)) }), UnexpectedExitError);
    expect(seen).toHaveLength(1);
    expect(e.exit).toBe(seen[0]);
    expect(e.exit).toMatchObject({ kind: 'io', direction: 'out', port: 0x2000, size: 4 });
  });

  gate(mappableVm.need).test(
    "punch-hole between two syncs: the host sees the guest's data through gmem.map(), punches the page, sees zeros, and so does the guest",
    async () => {
      using h = newVm(mappableType);
      using g = build('long', h.vm, {
        memory: { kind: 'guest-memfd' },
        code: (a, io) => {
          a.mov(mem(64, { disp: DATA }), 0x1234);
          io.sync(1);
          a.mov('rax', mem(64, { disp: DATA }));
          io.print('rax');
          a.cmp('rax', 0);
          io.assert('e', 1);
          io.done();
        },
      });
      const gmem = g.guestMemfd!;
      const seen: bigint[] = [];
      const r = await g.runUntilDone({
        onSync: () => {
          seen.push(u64(gmem.map().bytes(DATA, 8)));
          gmem.punchHole(DATA, 4096);
          seen.push(u64(gmem.map().bytes(DATA, 8)));
        },
      });
      expect(seen).toEqual([0x1234n, 0n]);
      expect(r.prints).toEqual([0n]);
    },
  );
});

describe('conversions driven by the guest', () => {
  gate(mapGpaRangeExit).test('enableMapGpaRangeExits() is accepted where KVM_CAP_EXIT_HYPERCALL offers bit 12', () => {
    using h = newVm();
    using g = long(h.vm, (_a, io) => io.done());
    expect(h.vm.capabilities().exitHypercall & (1 << 12)).not.toBe(0);
    g.enableMapGpaRangeExits();
  });

  test('enableMapGpaRangeExits() where bit 12 is not offered (KVM_CAP_EXIT_HYPERCALL mocked to 0): MissingCapabilityError', () => {
    using h = newVm();
    using g = long(h.vm, (_a, io) => io.done());
    const check = h.vm.checkExtension.bind(h.vm);
    vi.spyOn(h.vm, 'checkExtension').mockImplementation((cap) => (cap === 'EXIT_HYPERCALL' || cap === 201 ? 0 : check(cap)));
    const enable = vi.spyOn(h.vm, 'enableCap');
    let err: unknown;
    try {
      g.enableMapGpaRangeExits();
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(MissingCapabilityError);
    expect((err as MissingCapabilityError).capability).toBe('KVM_CAP_EXIT_HYPERCALL');
    expect((err as MissingCapabilityError).since).toBe('5.19');
    expect(enable).not.toHaveBeenCalled();
  });

  gate(kvmPvm, mapGpaRangeExit).test(
    "kvm_pvm: the guest's KVM_HC_MAP_GPA_RANGE never reaches the host; runUntilDone({ mapGpaRange }) times out on the vmcall, nothing converted",
    async () => {
      using h = newVm();
      using g = long(h.vm, (a, io) => {
        a.label('hc');
        mapGpaRange(a, io, DATA, 1, true, 1);
        io.done();
      });
      g.enableMapGpaRangeExits();
      const e = await rejection(g.runUntilDone({ mapGpaRange: true, timeoutMs: 300 }), GuestTimeoutError);
      // The 4 movs are 20 bytes; RIP stays on the vmcall that follows them.
      expect(e.rip).toBe(BigInt(g.label('hc') + 20));
      expect([...g.view(g.label('hc') + 20, 3)]).toEqual([0x0f, 0x01, 0xc1]);
      expect(h.vm.attributeRanges()).toEqual([]);
    },
  );

  gate(needs.not(kvmPvm, 'a KVM whose vmcall exits (not kvm_pvm)'), mapGpaRangeExit, needs.not(defaultVmPrivate)).test(
    'a default VM: the KVM_HC_MAP_GPA_RANGE hypercall reaches runUntilDone({ mapGpaRange }), whose conversion fails naming KVM_CAP_MEMORY_ATTRIBUTES: memory-attributes-unsupported where the ioctl exists, MissingCapabilityError where it does not',
    async () => {
      using h = newVm();
      using g = long(h.vm, (a, io) => {
        mapGpaRange(a, io, DATA, 1, true, 1);
        io.done();
      });
      g.enableMapGpaRangeExits();
      if (hostCaps().memoryAttributes.bits !== 0) {
        const e = await rejection(g.runUntilDone({ mapGpaRange: true }), AttributeRuleError);
        expect(e.rule).toBe('memory-attributes-unsupported');
        expect(e.message).toContain('KVM_CAP_MEMORY_ATTRIBUTES');
      } else {
        const e = await rejection(g.runUntilDone({ mapGpaRange: true }), MissingCapabilityError);
        expect(e.capability).toBe('KVM_CAP_MEMORY_ATTRIBUTES');
      }
      expect(h.vm.attributeRanges()).toEqual([]);
    },
  );

  gate(privateVm.need).describe('private memory', () => {
    test('mapGpaRange: shared writes show in memslot.view(), private writes do not, and a private page reads zero after its punch', async () => {
      using h = newVm(privateType);
      using g = build('long', h.vm, {
        memory: { kind: 'guest-memfd' },
        code: (a, io) => {
          a.mov(mem(64, { disp: DATA }), 0x1111);
          io.sync(1);
          mapGpaRange(a, io, DATA, 1, true, 1);
          io.sync(2);
          a.mov(mem(64, { disp: DATA }), 0x2222);
          a.mov('rax', mem(64, { disp: DATA }));
          a.cmp('rax', 0x2222);
          io.assert('e', 2);
          io.sync(3);
          mapGpaRange(a, io, DATA, 1, false, 3);
          a.mov('rax', mem(64, { disp: DATA }));
          io.print('rax');
          a.mov(mem(64, { disp: DATA }), 0x3333);
          io.sync(4);
          mapGpaRange(a, io, DATA, 1, true, 4);
          a.mov('rax', mem(64, { disp: DATA }));
          io.print('rax');
          a.cmp('rax', 0);
          io.assert('e', 5);
          io.done();
        },
      });
      g.enableMapGpaRangeExits();
      const seen: { n: number; shared: bigint; private: boolean }[] = [];
      const r: RunResult = await g.runUntilDone({
        mapGpaRange: true,
        onSync: (n) => void seen.push({ n, shared: u64(g.memslot.view(DATA, 8)), private: h.vm.isPrivate(DATA) }),
      });
      expect(seen).toEqual([
        { n: 1, shared: 0x1111n, private: false },
        // To private with discard: the shared copy is dropped.
        { n: 2, shared: 0n, private: true },
        // The guest's private write is not in the shared backing.
        { n: 3, shared: 0n, private: true },
        { n: 4, shared: 0x3333n, private: false },
      ]);
      // Back to shared, the guest reads the (dropped) shared copy; private again, the punched page.
      expect(r.prints).toEqual([0n, 0n]);
      expect(r.conversions.map((c) => [c.gpa, c.size, c.to])).toEqual([
        [DATA, 4096, 'private'],
        [DATA, 4096, 'shared'],
        [DATA, 4096, 'private'],
      ]);
      expect(h.vm.privateRanges()).toEqual([{ gpa: DATA, size: 4096 }]);
    });

    test('a private page on a memslot without guest_memfd: memory-fault exit with the private flag, its gpa and size 4096', async () => {
      using h = newVm(privateType);
      using g = long(h.vm, (a, io) => {
        a.mov('rax', mem(64, { disp: DATA }));
        io.print('rax');
        io.done();
      });
      expect(g.memslot.guestMemfd).toBeNull();
      h.vm.convert({ gpa: DATA, size: 4096 }, 'private');
      const seen: VcpuExit[] = [];
      const e = await rejection(g.runUntilDone({ onExit: (exit) => (seen.push(exit), false) }), UnexpectedExitError);
      expect(seen).toHaveLength(1);
      expect(e.exit).toBe(seen[0]);
      expect(seen[0]).toMatchObject({ kind: 'memory-fault', private: true, gpa: BigInt(DATA), size: 4096n, errno: 14 });
    });

    test('convertOnMemoryFault: the handler converts the faulting page and re-enters until done', async () => {
      using h = newVm(privateType);
      using g = long(h.vm, (a, io) => {
        a.mov('rax', mem(64, { disp: DATA }));
        io.print('rax');
        io.done();
      });
      new DataView(g.view(DATA, 8).buffer, g.view(DATA, 8).byteOffset).setBigUint64(0, 0x5a5an, true);
      h.vm.convert({ gpa: DATA, size: 4096 }, 'private');
      const r = await g.runUntilDone({ convertOnMemoryFault: true });
      expect(r.conversions).toEqual([{ gpa: DATA, size: 4096, to: 'shared', attributes: 0, discarded: [] }]);
      expect(r.prints).toEqual([0x5a5an]);
      expect(h.vm.isPrivate(DATA)).toBe(false);
    });
  });
});

// The guest helpers a selftest takes from kvm_util: the guest-physical page
// allocator (vm_phy_pages_alloc), page tables extended to any canonical gva
// (virt_map, addr_gva2gpa, above 4 GiB and in the upper half), guest
// arguments (vcpu_args_set), asserts that carry both values
// (GUEST_ASSERT_EQ), GUEST_PRINTF, the IDT whose stubs turn an unexpected
// exception into a typed error (ucall UNHANDLED) or reach the program's own
// handler, and several vCPUs of one guest running at once on their threads.
// Every guest here runs on the real kernel (the test VMs; the file needs /dev/kvm).
import { describe, expect, onTestFailed, test } from 'vitest';
import {
  type Assembler,
  Guest,
  GuestAssertError,
  GuestExceptionError,
  type GuestIo,
  GuestMapError,
  type GuestOptions,
  emitUcall,
  Layout,
  mem,
  PhysPagesExhaustedError,
  Ucall,
  type Vm,
} from '../lib/index.js';
import { newVm, rejection, u64 } from './helpers.js';

function long(vm: Vm, code: (a: Assembler, io: GuestIo) => void, more: Omit<GuestOptions, 'code'> = {}): Guest {
  const g = Guest.longMode(vm, { ...more, code });
  onTestFailed(() => console.log(`guest listing:\n${g.listing}`));
  return g;
}

const GIB4 = 0x1_0000_0000;

describe('the guest-physical page allocator (vm_phy_pages_alloc)', () => {
  test("never hands out the builder's tables, stack, IDT or program; runs are contiguous, aligned, distinct", () => {
    using h = newVm();
    using g = long(h.vm, (_a, io) => io.done(), { memory: { size: 8 << 20 } });
    const end = Layout.CODE + g.program.bytes.length;
    const a = g.allocPages(1);
    const b = g.allocPages(3);
    const c = g.allocPages(2, { align: 0x20_0000 });
    const d = g.allocPages(1, { minGpa: 0x10_0001 });
    expect(a).toBe(Math.ceil(end / 4096) * 4096);
    expect(b).toBe(a + 0x1000);
    expect(c % 0x20_0000).toBe(0);
    expect(d).toBe(0x10_1000);
    for (const gpa of [0, Layout.PML4, Layout.IDT, Layout.STACK_TOP - 8, Layout.CODE, a, b + 0x2000, c + 0x1000, d]) expect(g.phys.isTaken(gpa)).toBe(true);
    expect(g.phys.isTaken(b + 0x3000)).toBe(false);
    // The builder's fixed region is one run from gpa 0.
    expect(g.phys.taken(g.memslot)[0]).toEqual({ gpa: 0, size: Math.ceil(end / 4096) * 4096 + 0x4000 });
  });

  test('a run that does not fit: PhysPagesExhaustedError naming the count and the memslot; a second memslot above 4 GiB serves its own pages', () => {
    using h = newVm();
    using g = long(h.vm, (_a, io) => io.done());
    let err: unknown;
    try {
      g.allocPages(512);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PhysPagesExhaustedError);
    expect(err).toMatchObject({ code: 'ERR_KVM_GUEST_PHYS_EXHAUSTED', pages: 512, slot: g.memslot.slot });
    const high = h.vm.addMemslot({ gpa: GIB4, size: 0x40_0000 });
    expect(g.allocPages(512, { memslot: high })).toBe(GIB4);
    expect(g.allocPages(1, { memslot: high })).toBe(GIB4 + 0x20_0000);
    expect(() => g.allocPages(0)).toThrow(RangeError);
    expect(() => g.allocPages(1, { align: 0x3000 })).toThrow(RangeError);
  });

  test('a real-mode guest reserves its stack below 0x8000 and its program', () => {
    using h = newVm();
    using g = Guest.realMode(h.vm, { code: (_a, io) => io.done() });
    expect(g.allocPages(1)).toBe(0x8000);
  });
});

describe('page tables to any canonical gva (virt_map, addr_gva2gpa)', () => {
  test('4 KiB and 2 MiB pages above 4 GiB and in the upper half: the guest writes through them, the host reads the gpa, translate() agrees', async () => {
    using h = newVm();
    const high = h.vm.addMemslot({ gpa: GIB4, size: 0x40_0000 });
    const GVA4K = 0x7f12_3456_7000n;
    const GVA2M = 0x40_0000_0000n;
    const UPPER = 0xffff_8000_0000_0000n;
    using g = long(h.vm, (a, io) => {
      a.mov('rax', GVA4K).mov(mem(64, 'rax', 8), 0x4444);
      a.mov('rax', GVA2M).mov(mem(64, 'rax', 0x1_2340), 0x2222);
      a.mov('rax', UPPER).mov('rcx', mem(64, 'rax', 8));
      io.assertEq('rcx', 0x4444, 'the upper-half alias reads the 4 KiB page');
      io.done();
    });
    const p4k = g.allocPages(1, { memslot: high });
    const p2m = g.allocPages(512, { memslot: high, align: 0x20_0000 });
    g.map(GVA4K, p4k, 0x1000);
    g.map(GVA2M, p2m, 0x20_0000, { pageSize: 0x20_0000 });
    g.map(UPPER, p4k, 0x1000);
    expect(g.translate(GVA4K + 0x123n)).toBe(BigInt(p4k) + 0x123n);
    expect(g.translate(GVA2M + 0x1_2340n)).toBe(BigInt(p2m) + 0x1_2340n);
    expect(g.translate(UPPER)).toBe(BigInt(p4k));
    expect(g.translate(0x1234n)).toBe(0x1234n); // the builder's identity map
    expect(g.translate(0x50_0000_0000n)).toBeNull();
    expect(g.translate(0x8000_0000_0000n)).toBeNull(); // not canonical
    await g.runUntilDone();
    expect(u64(high.view(p4k + 8, 8))).toBe(0x4444n);
    expect(u64(high.view(p2m + 0x1_2340, 8))).toBe(0x2222n);
    // The tables took pages from the allocator, not from the guest's data.
    expect(g.phys.taken(g.memslot).length).toBeGreaterThan(0);
  });

  test('a gva already mapped: GuestMapError unless replace; replace splits the 2 MiB identity page into 4 KiB pages that keep the rest', async () => {
    using h = newVm();
    using g = long(
      h.vm,
      (a, io) => {
        a.mov('rax', mem(64, undefined, 0x20_1000));
        io.assertEq('rax', 0x77, 'the remapped page');
        a.mov('rax', mem(64, undefined, 0x20_2000));
        io.assertEq('rax', 0x88, 'its neighbour, still identity-mapped');
        io.done();
      },
      { memory: { size: 8 << 20 } },
    );
    const page = g.allocPages(1);
    let err: unknown;
    try {
      g.map(0x20_1000, page, 0x1000);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(GuestMapError);
    expect(err).toMatchObject({ code: 'ERR_KVM_GUEST_GVA_MAPPED', gva: 0x20_1000n });
    expect(g.translate(0x20_1000)).toBe(0x20_1000n); // nothing changed
    g.map(0x20_1000, page, 0x1000, { replace: true });
    expect(g.translate(0x20_1000)).toBe(BigInt(page));
    expect(g.translate(0x20_2000)).toBe(0x20_2000n);
    g.view(page, 8).set([0x77]);
    g.view(0x20_2000, 8).set([0x88]);
    await g.runUntilDone();
  });

  test('misaligned, non-canonical or past-52-bit requests: RangeError, tables unchanged', () => {
    using h = newVm();
    using g = long(h.vm, (_a, io) => io.done());
    const before = g.phys.taken(g.memslot);
    expect(() => g.map(0x50_0000_0800n, 0x10_0000, 0x1000)).toThrow(RangeError);
    expect(() => g.map(0x50_0000_0000n, 0x10_0000, 0x1000, { pageSize: 0x20_0000 })).toThrow(RangeError);
    expect(() => g.map(0x8000_0000_0000n, 0x10_0000, 0x1000)).toThrow(RangeError);
    expect(() => g.map(0x7fff_ffff_f000n, 0x10_0000, 0x2000)).toThrow(RangeError);
    expect(() => g.map(0x50_0000_0000n, 1n << 52n, 0x1000)).toThrow(RangeError);
    expect(() => g.map(0x50_0000_0000n, 0, 0x1000, { pageSize: 0x1000_0000 as never })).toThrow(RangeError);
    expect(g.phys.taken(g.memslot)).toEqual(before);
    expect(g.translate(0x50_0000_0000n)).toBeNull();
  });

  test('real-mode guests have no page tables', () => {
    using h = newVm();
    using g = Guest.realMode(h.vm, { code: (_a, io) => io.done() });
    expect(() => g.map(0, 0, 0x1000)).toThrow(/only 64-bit guests/);
  });
});

describe('guest arguments, asserts with values, printf', () => {
  test('args / setArgs (vcpu_args_set): RDI, RSI, RDX, RCX, R8, R9, any 64-bit value', async () => {
    using h = newVm();
    const args = [1n, 0xffff_ffff_ffff_ffffn, 0x8000_0000n, 4n, 0x1234_5678_9abc_def0n, 6n];
    using g = long(
      h.vm,
      (_a, io) => {
        (['rdi', 'rsi', 'rdx', 'rcx', 'r8', 'r9'] as const).forEach((r, i) => io.assertEq(r, args[i]!, `argument ${i}`));
        io.done();
      },
      { args: [1, 2, 3] },
    );
    expect(g.vcpu.getRegs()).toMatchObject({ rdi: 1n, rsi: 2n, rdx: 3n });
    g.setArgs(args);
    await g.runUntilDone();
    expect(() => g.setArgs([1, 2, 3, 4, 5, 6, 7])).toThrow(RangeError);
    expect(() => g.setArgs([-1])).toThrow(TypeError);
  });

  test('assertEq failing: GuestAssertError with both values, the operands as written, the message and the rip', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.mov('rax', 41);
      io.assertCmp('rax', '<', 0xffff_ffff_ffffn, 'small'); // holds
      io.sync(1);
      a.label('site');
      io.assertEq('rax', 42, 'the answer');
      io.done();
    });
    const e = await rejection(g.runUntilDone(), GuestAssertError);
    expect(e.code).toBe('ERR_KVM_GUEST_ASSERT');
    expect(e.assertMessage).toBe('the answer');
    expect(e.values).toEqual({ op: '==', actual: 41n, expected: 42n, actualOperand: 'rax', expectedOperand: '42' });
    expect(e.syncs).toEqual([1]);
    expect(e.rip).toBeGreaterThan(BigInt(g.label('site')));
    expect(e.message).toMatch(/rax == 42: actual 0x29 \(41\), expected 0x2a \(42\): the answer/);
  });

  test('assertCmp keeps every register when it holds; r10/r11 may be operands; assert() carries a message', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.mov('r10', 5).mov('r11', 7).mov('rax', 0x1_0000_0000n);
      io.assertCmp('r10', '<', 'r11').assertCmp('r11', '>=', 7).assertCmp('rax', '==', 0x1_0000_0000n).assertCmp('rax', '!=', 0);
      io.assertEq('r10', 5).assertEq('r11', 7);
      a.cmp('rax', 1);
      io.assert('e', 9, 'rax is not 1');
      io.done();
    });
    const e = await rejection(g.runUntilDone(), GuestAssertError);
    expect(e).toMatchObject({ assertCode: 9, assertMessage: 'rax is not 1', values: undefined });
  });

  test('printf: the host formats each line as C would; onPrintf sees them as they come', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.mov('rax', 0xdead_beefn).mov('rbx', -5);
      io.printf('gpa %#lx value %d', 'rax', 'rbx');
      io.printf('%016lx|%5u|%-4x|%%', 0x1234, 42, 0xab);
      io.printf('no values');
      io.done();
    });
    const seen: string[] = [];
    const r = await g.runUntilDone({ onPrintf: (l) => void seen.push(l) });
    expect(r.printed).toEqual(['gpa 0xdeadbeef value -5', '0000000000001234|   42|ab  |%', 'no values']);
    expect(seen).toEqual(r.printed);
  });
});

describe('exceptions (the IDT and ucall UNHANDLED)', () => {
  test('ud2: GuestExceptionError #UD with the rip of the instruction', async () => {
    using h = newVm();
    using g = long(h.vm, (a) => {
      a.label('bad').ud2();
    });
    const e = await rejection(g.runUntilDone(), GuestExceptionError);
    expect(e).toMatchObject({ code: 'ERR_KVM_GUEST_EXCEPTION', vector: 6, mnemonic: '#UD', rip: BigInt(g.label('bad')), errorCode: 0n, vcpuId: 0 });
  });

  test('a write to an unmapped gva: #PF with CR2 and the error code (present 0, write 1)', async () => {
    using h = newVm();
    using g = long(h.vm, (a) => {
      a.mov('rax', 0x60_0000_0000n);
      a.label('bad').mov(mem(64, 'rax', 0x18), 1);
    });
    const e = await rejection(g.runUntilDone(), GuestExceptionError);
    expect(e).toMatchObject({ vector: 14, mnemonic: '#PF', rip: BigInt(g.label('bad')), cr2: 0x60_0000_0018n });
    expect(e.errorCode & 3n).toBe(2n);
    expect(e.message).toMatch(/#PF .* cr2 0x6000000018/);
  });

  test("the program's own handler on a vector (exceptionHandlers): it runs and returns with iretq", async () => {
    using h = newVm();
    using g = long(
      h.vm,
      (a, io) => {
        a.mov('rbx', 0);
        a.ud2();
        io.assertEq('rbx', 1, 'the handler ran once');
        io.done();
        a.label('ud_handler');
        a.inc('rbx');
        a.add(mem(64, 'rsp', 0), 2); // skip the 2-byte ud2
        a.iretq();
      },
      { exceptionHandlers: { 6: 'ud_handler' } },
    );
    await g.runUntilDone();
    expect(() => Guest.longMode(h.vm, { code: (_a, io) => io.done(), exceptionHandlers: { 32: 'x' } })).toThrow(RangeError);
  });
});

describe('several vCPUs of one guest (runAll)', () => {
  test('each vCPU on its own thread with its own stack and arguments; all finish; results in vcpus order', async () => {
    using h = newVm();
    const slots = 0x10_0000;
    using g = long(h.vm, (a, io) => {
      // rdi: index; each vCPU stores index+1 in its slot, prints, and checks its stack is its own.
      a.mov('rax', 'rdi').add('rax', 1);
      a.mov(mem(64, 'rdi', slots), 'rax'); // rdi*1 + slots: distinct bytes per vCPU are enough
      a.push('rdi');
      a.pop('rcx');
      io.assertEq('rcx', 'rdi', 'stack round trip');
      io.printf('vcpu %lu', 'rdi');
      io.sync(1);
      io.done();
    });
    const n = 3;
    g.setArgs([0]);
    for (let i = 1; i < n; i++) g.addVcpu({ args: [i * 8] });
    expect(g.vcpus.length).toBe(n);
    const stacks = g.vcpus.map((v) => v.getRegs().rsp);
    expect(new Set(stacks).size).toBe(n);
    const rs = await g.runAll();
    expect(rs.map((r) => r.printed)).toEqual([['vcpu 0'], ['vcpu 8'], ['vcpu 16']]);
    expect(rs.every((r) => r.syncs.length === 1)).toBe(true);
    for (let i = 0; i < n; i++) expect(g.view(slots + i * 8, 1)[0]).toBe(i * 8 + 1);
  });

  test('onSync under runAll: the third argument names the vCPU that synced and carries the five ucall argument registers', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      // A GUEST_SYNC5: n = 7, then rdi (the vCPU's argument), two immediates and a 64-bit one.
      a.mov('rbx', 'rdi');
      emitUcall(a, Ucall.SYNC, 7, 'rbx', 0x22, 0x33, 0x1_0000_0044n);
      io.done();
    });
    g.setArgs([0x100]);
    const second = g.addVcpu({ args: [0x200] });
    const seen: { id: number; n: number; args: bigint[] }[] = [];
    await g.runAll({ onSync: (n, _guest, ucall) => void seen.push({ id: ucall.vcpu.id, n, args: ucall.args }) });
    seen.sort((x, y) => x.id - y.id);
    expect(seen).toEqual([
      { id: 0, n: 7, args: [7n, 0x100n, 0x22n, 0x33n, 0x1_0000_0044n] },
      { id: second.id, n: 7, args: [7n, 0x200n, 0x22n, 0x33n, 0x1_0000_0044n] },
    ]);
  });

  test('one vCPU failing kicks the others (spinning forever) out: runAll rejects with that failure', async () => {
    using h = newVm();
    using g = long(h.vm, (a, io) => {
      a.cmp('rdi', 0);
      a.jne('fail');
      a.label('spin').pause().jmp('spin');
      a.label('fail');
      io.assertEq('rdi', 0, 'vCPU 1 fails');
      io.done();
    });
    g.addVcpu({ entry: Layout.CODE, args: [1] });
    const t0 = Date.now();
    const e = await rejection(g.runAll({ timeoutMs: 0 }), GuestAssertError);
    expect(e.values?.actual).toBe(1n);
    expect(Date.now() - t0).toBeLessThan(60_000);
    expect(g.vcpus.every((v) => !v.running)).toBe(true);
  });

  test('addVcpu on a real-mode guest: RangeError', () => {
    using h = newVm();
    using g = Guest.realMode(h.vm, { code: (_a, io) => io.done() });
    expect(() => g.addVcpu()).toThrow(/only 64-bit guests/);
  });
});

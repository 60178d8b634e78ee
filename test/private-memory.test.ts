// Private memory for real, on a KVM_X86_SW_PROTECTED_VM: guests that read and
// write pages while the host converts them between shared and private, the
// memory-fault exits KVM gives for private accesses it cannot back, the
// guest-requested conversions of the kernel's private_mem_conversions_test
// (KVM_HC_MAP_GPA_RANGE), KVM_PRE_FAULT_MEMORY, and the rules only a
// private-memory VM can hit, each checked by the TS layer and then against
// the kernel through the raw layer.
//
// The development host has no 'sw-protected' VM type, so every test here
// skips there (visibly, naming the capability); `npm run test:vm` runs them
// inside the Linux 6.12 test VM (kvm-amd under QEMU TCG), where the guard at
// the end fails the run if they could not run.
//
// Measured on 6.12 (sw-protected VM, anonymous shared backing + guest_memfd):
// - A page set private reads zero in the guest until the guest writes it;
//   private writes never show through the shared backing, shared writes do.
// - Without discard both copies survive conversions: private data is there
//   again after private -> shared -> private, shared data after
//   shared -> private -> shared. A punched guest_memfd page (discard on the
//   way to shared, or punchHole while private) reads zero next time.
// - KVM decides whether an access is private from the attributes alone
//   (kvm_mmu_page_fault sets PFERR_PRIVATE_ACCESS for private gfns), so the
//   memory-fault exits of a sw-protected VM have the private flag (one
//   exception below): a private gfn in a memslot without guest_memfd, whose
//   guest_memfd was closed, or with no memslot at all (deleted). flags = 8 (PRIVATE only, no RWX bits),
//   gpa = the page's base even for an access inside the page, size 4096,
//   KVM_RUN fails with EFAULT and RIP stays on the access. Only converting
//   to shared can let such a guest go on; for a deleted memslot the access
//   then becomes MMIO.
// - A gfn without a memslot that the guest once read as MMIO usually stays
//   MMIO after it is made private: KVM caches an MMIO SPTE, and a fault on
//   it (reserved bits) never gets the private flag; attribute changes only
//   zap SPTEs inside memslots. After a memslot change makes that SPTE stale
//   the access gives a memory-fault exit *without* the private flag. In one
//   run of three the SPTE was gone anyway and the access faulted as private,
//   so the tests here never touch a memslot-less gfn while it is shared.
// - A shared access to a memslot with userspace_addr 0 fails KVM_RUN with
//   EFAULT without a memory-fault exit.
// - KVM_HC_MAP_GPA_RANGE: vmcall and vmmcall both exit to userspace on this
//   AMD (SVM) KVM; KVM rewrites a vmcall into vmmcall (0f 01 d9) in guest
//   memory (KVM_X86_QUIRK_FIX_HYPERCALL_INSN). An unaligned gpa or npages 0
//   never exits: the guest gets -KVM_EINVAL (-22) in RAX; without
//   KVM_CAP_EXIT_HYPERCALL enabled every request gets -KVM_ENOSYS (-1000),
//   whatever its arguments.
// - KVM_PRE_FAULT_MEMORY: partial progress returns 0 with the remainder;
//   no progress and no memslot -> ENOENT; a private gfn that cannot be backed
//   (no guest_memfd, or no memslot) -> EFAULT, and the kernel leaves a
//   memory-fault exit in kvm_run although no KVM_RUN happened.
import { readFileSync } from 'node:fs';
import { afterAll, expect, onTestFailed, test } from 'vitest';
import {
  AlignmentError,
  Assembler,
  AttributeRuleError,
  type ConversionRecord,
  emitUcall,
  ExitReason,
  Guest,
  GuestIo,
  GuestMemfdRuleError,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MAP_GPA_RANGE_ENCRYPTED,
  KvmError,
  KvmRuleError,
  Mapping,
  mem,
  MemoryAttribute,
  type MemoryFaultExit,
  MemslotFlagsError,
  raw,
  Ucall,
  UCALL_PORT,
  UnexpectedExitError,
  type Vcpu,
  type VcpuExit,
  type Vm,
} from '../lib/index.js';
import { expectKernel, expectKernelAgrees, expectRule, gate, needs, newVm, openKvm, tables, u64 } from './helpers.js';

// Under QEMU TCG the test VM's kernel sometimes oopses ("int3" in
// __schedule) while it patches a static key, and KVM flips two of them each
// time the number of VMs (preempt notifiers) or of vCPUs without an in-kernel
// APIC goes between 0 and 1. One VM with one vCPU kept open for this whole
// file keeps both counts above zero, so the ~25 VMs below patch nothing.
const keeper = (() => {
  const kvm = openKvm();
  const vm = kvm.createVm();
  vm.createVcpu(0);
  return {
    close: () => {
      vm.close();
      kvm.close();
    },
  };
})();
afterAll(() => keeper.close());

const swPrivate = gate(needs.vmType('sw-protected'), needs.memoryAttributes('private', 'sw-protected'));
// 6.12's default VM refuses KVM_MEM_GUEST_MEMFD memslots; 6.18's and 7.3's accept them.
const defaultVmRefusesGmemSlots = gate(
  needs.cap('GUEST_MEMFD', 'kvm', { text: 'KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD on /dev/kvm)' }),
  needs.not(needs.cap('GUEST_MEMFD', 'default'), "KVM_CAP_GUEST_MEMFD = 0 on a 'default' VM (its memslots refuse KVM_MEM_GUEST_MEMFD, as on 6.12)"),
);
// kvm-amd (the test VM) or kvm-intel: which hypercall instruction is native.
const svm = /^flags\s*:.*\bsvm\b/m.test(readFileSync('/proc/cpuinfo', 'utf8'));

const PRIVATE = MemoryAttribute.PRIVATE;
const PAGE = 0x1000;
// Deadline for each guest run: TCG is slow, and a hung guest must still end.
const RUN_MS = 60_000;
const KVM_EINVAL = BigInt.asUintN(64, -22n);
const KVM_ENOSYS = BigInt.asUintN(64, -1000n);

/** A 64-bit guest on guest_memfd memory (on a sw-protected VM: guest_memfd + anonymous shared backing). */
function longGuest(vm: Vm, code: (a: Assembler, io: GuestIo) => void, kind: 'guest-memfd' | 'anonymous' = 'guest-memfd'): Guest {
  const g = Guest.longMode(vm, { memory: { kind }, code });
  onTestFailed(() => console.log(`guest listing:\n${g.listing}`));
  return g;
}

function setU64(bytes: Uint8Array, v: bigint): void {
  new DataView(bytes.buffer, bytes.byteOffset, 8).setBigUint64(0, v, true);
}

const hexes = (xs: readonly bigint[]) => xs.map((x) => `0x${x.toString(16)}`);

// ---------------------------------------------------------------------------
// A guest the host drives: it reads or writes a list of gpas given in a
// mailbox page, prints what it read, says done and waits for the next batch.
// An access that ends in a memory-fault exit is skipped (a read then gives
// FAULTED); any other exit (e.g. MMIO) fails the batch.

const MAILBOX = 0x18000;
const FAULTED = 0xfa17n;

class RemoteGuest implements Disposable {
  /** Memory-fault exits of the last batch. */
  faults: MemoryFaultExit[] = [];

  constructor(
    readonly vm: Vm,
    readonly guest: Guest,
  ) {}

  static create(vm: Vm): RemoteGuest {
    return new RemoteGuest(
      vm,
      longGuest(vm, (a, io) => {
        a.label('top');
        a.mov('r8', mem(64, { disp: MAILBOX })); // 1 = read, 2 = write
        a.mov('r9', mem(64, { disp: MAILBOX + 8 })); // entries
        a.mov('r10', MAILBOX + 16); // entry: gpa, value
        a.label('next');
        a.cmp('r9', 0);
        a.je('batch_done');
        a.mov('rbx', mem(64, { base: 'r10' }));
        a.cmp('r8', 1);
        a.jne('do_write');
        a.label('read');
        a.mov('rax', mem(64, { base: 'rbx' }));
        a.label('read_end');
        io.print('rax');
        a.jmp('step');
        a.label('do_write');
        a.mov('rcx', mem(64, { base: 'r10', disp: 8 }));
        a.label('write');
        a.mov(mem(64, { base: 'rbx' }), 'rcx');
        a.label('write_end');
        a.label('step');
        a.add('r10', 16);
        a.dec('r9');
        a.jmp('next');
        a.label('batch_done');
        // done() without its hlt: the next runUntilDone() starts the next batch.
        emitUcall(a, Ucall.DONE);
        a.jmp('top');
      }),
    );
  }

  /** What the guest reads at each gpa. */
  async read(gpas: readonly number[]): Promise<bigint[]> {
    return this.batch(
      1,
      gpas.map((g) => [g, 0n]),
    );
  }

  /** The guest writes each value at its gpa. */
  async write(entries: readonly (readonly [number, bigint])[]): Promise<void> {
    await this.batch(2, entries);
  }

  private async batch(op: 1 | 2, entries: readonly (readonly [number, bigint])[]): Promise<bigint[]> {
    this.faults = [];
    const box = this.guest.view(MAILBOX, 16 + entries.length * 16);
    const d = new DataView(box.buffer, box.byteOffset, box.byteLength);
    d.setBigUint64(0, BigInt(op), true);
    d.setBigUint64(8, BigInt(entries.length), true);
    entries.forEach(([gpa, v], i) => {
      d.setBigUint64(16 + i * 16, BigInt(gpa), true);
      d.setBigUint64(24 + i * 16, v, true);
    });
    const r = await this.guest.runUntilDone({ timeoutMs: RUN_MS, onExit: (exit) => this.onExit(exit) });
    return r.prints;
  }

  private onExit(exit: VcpuExit): boolean {
    const g = this.guest;
    if (exit.kind === 'memory-fault') {
      const rip = Number(g.vcpu.getRegs().rip);
      if (rip !== g.label('read') && rip !== g.label('write')) return false;
      this.faults.push(exit);
      g.vcpu.updateRegs((r) => {
        if (rip === g.label('read')) r.rax = FAULTED;
        r.rip = BigInt(g.label(rip === g.label('read') ? 'read_end' : 'write_end'));
      });
      return true;
    }
    return false;
  }

  close(): void {
    this.guest.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * What the guest should read at `gpa`, predicted from the VM's shadow of the
 * attributes: a private page reads its guest_memfd content (`privateData`,
 * zero when never written or punched), or faults without a usable
 * guest_memfd or without a memslot; a shared page reads the shared backing.
 */
function predicted(vm: Vm, gpa: number, privateData: ReadonlyMap<number, bigint>): bigint {
  const slot = vm.memslotAt(gpa);
  if (vm.isPrivate(gpa)) return slot?.guestMemfd && !slot.guestMemfd.closed ? (privateData.get(gpa) ?? 0n) : FAULTED;
  if (slot === undefined) throw new Error(`the tests never read the shared gfn 0x${gpa.toString(16)} without a memslot (MMIO)`);
  return u64(slot.view(gpa, 8));
}

/** The guest reads every page; the shadow map must predict each value. Returns what it read. */
async function expectShadowMatchesGuest(r: RemoteGuest, pages: readonly number[], privateData: ReadonlyMap<number, bigint>): Promise<bigint[]> {
  const seen = await r.read(pages);
  expect(hexes(seen)).toEqual(hexes(pages.map((p) => predicted(r.vm, p, privateData))));
  return seen;
}

swPrivate.describe('conversions seen by a guest', () => {
  test('one page, step by step: zeros when freshly private, private writes invisible to the host, both copies kept without discard, zeros after a discard or a punch', async () => {
    using h = newVm('sw-protected');
    using r = RemoteGuest.create(h.vm);
    const { vm } = h;
    const P = 0x10_0000;
    const slot = r.guest.memslot;
    const gmem = r.guest.guestMemfd!;
    const priv = new Map<number, bigint>();
    const shared = () => u64(slot.view(P, 8));
    const check = async () => (await expectShadowMatchesGuest(r, [P], priv))[0];
    expect(slot.backing).toBe('anonymous');
    expect(gmem.boundRanges()).toEqual([{ slot: slot.slot, addressSpace: 0, offset: 0, size: 2 << 20, gpa: 0 }]);

    setU64(slot.view(P, 8), 0xaaaan);
    expect(await check()).toBe(0xaaaan);

    expect(vm.convert({ gpa: P, size: PAGE }, 'private')).toEqual({ gpa: P, size: PAGE, to: 'private', attributes: PRIVATE, discarded: [] });
    expect(vm.privateRanges()).toEqual([{ gpa: P, size: PAGE }]);
    expect(await check()).toBe(0n); // fresh private page: zero, not the host's 0xaaaa
    await r.write([[P, 0x1111n]]);
    priv.set(P, 0x1111n);
    expect(await check()).toBe(0x1111n);
    expect(shared()).toBe(0xaaaan); // the private write is not in the shared backing

    vm.convert({ gpa: P, size: PAGE }, 'shared');
    expect(vm.privateRanges()).toEqual([]);
    expect(await check()).toBe(0xaaaan); // the shared copy was kept
    await r.write([[P, 0x2222n]]);
    expect(shared()).toBe(0x2222n); // a shared write is visible

    vm.convert({ gpa: P, size: PAGE }, 'private');
    expect(await check()).toBe(0x1111n); // private data survived private -> shared -> private

    expect(vm.convert({ gpa: P, size: PAGE }, 'shared', { discard: true })).toEqual({
      gpa: P,
      size: PAGE,
      to: 'shared',
      attributes: 0,
      discarded: [{ slot: slot.slot, addressSpace: 0, what: 'guest_memfd', gpa: P, size: PAGE }],
    });
    priv.delete(P);
    expect(await check()).toBe(0x2222n);
    vm.convert({ gpa: P, size: PAGE }, 'private');
    expect(await check()).toBe(0n); // the punched private page

    await r.write([[P, 0x3333n]]);
    priv.set(P, 0x3333n);
    expect(await check()).toBe(0x3333n);
    gmem.punchHole(P, PAGE); // while private
    priv.delete(P);
    expect(await check()).toBe(0n);

    await r.write([[P, 0x4444n]]);
    priv.set(P, 0x4444n);
    vm.convert({ gpa: P, size: PAGE }, 'shared');
    expect(vm.convert({ gpa: P, size: PAGE }, 'private', { discard: true })).toEqual({
      gpa: P,
      size: PAGE,
      to: 'private',
      attributes: PRIVATE,
      discarded: [{ slot: slot.slot, addressSpace: 0, what: 'shared-backing', gpa: P, size: PAGE }],
    });
    expect(shared()).toBe(0n); // MADV_REMOVE dropped the shared copy
    expect(await check()).toBe(0x4444n);
    vm.convert({ gpa: P, size: PAGE }, 'shared');
    expect(await check()).toBe(0n);
    expect(vm.privateRanges()).toEqual([]);
  });

  test('a range over three memslots and a hole: records per memslot with skipped reasons, and after each step the shadow map predicts every page', async () => {
    using h = newVm('sw-protected');
    using r = RemoteGuest.create(h.vm);
    const { vm } = h;
    // [0x1fe000, 0x20a000): 2 pages of the guest's memslot (guest_memfd), 4 of
    // memslot A (guest_memfd bound at file offset 0x1000), 2 without a
    // memslot, 4 of memslot B (no guest_memfd).
    const main = r.guest.memslot;
    const gmemA = vm.createGuestMemfd({ size: 0x5000 });
    const a = vm.addMemslot({ gpa: 0x20_0000, size: 0x4000, guestMemfd: gmemA, guestMemfdOffset: 0x1000 });
    const b = vm.addMemslot({ gpa: 0x20_6000, size: 0x4000 });
    const START = 0x1f_e000;
    const SIZE = 0xc000;
    const pages = Array.from({ length: SIZE / PAGE }, (_, i) => START + i * PAGE);
    const region = (i: number) => (i < 2 ? 'main' : i < 6 ? 'a' : i < 8 ? 'hole' : 'b');
    // The guest reads the hole only while it is private (see the header: a
    // shared read would leave an MMIO SPTE that later hides the private state).
    const inSlots = pages.filter((_, i) => region(i) !== 'hole');
    type Row = Partial<Record<'main' | 'a' | 'hole' | 'b', bigint | ((i: number) => bigint)>>;
    const row = (f: Row) =>
      hexes(
        pages.flatMap((_, i) => {
          const v = f[region(i)];
          return v === undefined ? [] : [typeof v === 'function' ? v(i) : v];
        }),
      );
    const S = (i: number) => 0x5000n + BigInt(i); // host's shared markers
    const V = (i: number) => 0x7000n + BigInt(i); // guest's private writes
    const W = (i: number) => 0x9000n + BigInt(i);
    const priv = new Map<number, bigint>();
    const step = async (which: readonly number[] = pages) => hexes(await expectShadowMatchesGuest(r, which, priv));
    const faultGpas = () => r.faults.map((f) => ({ gpa: f.gpa, private: f.private, size: f.size }));
    const fault = (i: number) => ({ gpa: BigInt(pages[i]!), private: true, size: 4096n });
    expect(vm.memslots().map((m) => [m.slot, m.gpa, m.size, m.guestMemfd !== null])).toEqual([
      [main.slot, 0, 0x20_0000, true],
      [a.slot, 0x20_0000, 0x4000, true],
      [b.slot, 0x20_6000, 0x4000, false],
    ]);
    pages.forEach((p, i) => {
      if (region(i) !== 'hole') setU64(vm.memslotAt(p)!.view(p, 8), S(i));
    });

    expect(await step(inSlots)).toEqual(row({ main: S, a: S, b: S }));

    // To private, no discard: attributes need no memslot, so the hole is private too.
    expect(vm.convert({ gpa: START, size: SIZE }, 'private')).toEqual({ gpa: START, size: SIZE, to: 'private', attributes: PRIVATE, discarded: [] });
    expect(vm.privateRanges()).toEqual([{ gpa: START, size: SIZE }]);
    expect(await step()).toEqual(row({ main: 0n, a: 0n, hole: FAULTED, b: FAULTED }));
    expect(faultGpas()).toEqual([6, 7, 8, 9, 10, 11].map(fault));

    await r.write(pages.map((p, i) => [p, V(i)] as const));
    expect(faultGpas()).toEqual([6, 7, 8, 9, 10, 11].map(fault));
    pages.forEach((p, i) => {
      if (region(i) === 'main' || region(i) === 'a') priv.set(p, V(i));
    });
    expect(await step()).toEqual(row({ main: V, a: V, hole: FAULTED, b: FAULTED }));
    // The shared backings still hold the host's markers.
    expect(pages.map((p, i) => (region(i) === 'hole' ? 0n : u64(vm.memslotAt(p)!.view(p, 8))))).toEqual(
      pages.map((_, i) => (region(i) === 'hole' ? 0n : S(i))),
    );

    // To shared with discard: both guest_memfd ranges punched, B has none.
    expect(vm.convert({ gpa: START, size: SIZE }, 'shared', { discard: true })).toEqual({
      gpa: START,
      size: SIZE,
      to: 'shared',
      attributes: 0,
      discarded: [
        { slot: main.slot, addressSpace: 0, what: 'guest_memfd', gpa: START, size: 0x2000 },
        { slot: a.slot, addressSpace: 0, what: 'guest_memfd', gpa: 0x20_0000, size: 0x4000 },
        { slot: b.slot, addressSpace: 0, what: 'guest_memfd', gpa: 0x20_6000, size: 0x4000, skipped: 'memslot has no guest_memfd' },
      ],
    });
    priv.clear();
    expect(vm.privateRanges()).toEqual([]);
    expect(await step(inSlots)).toEqual(row({ main: S, a: S, b: S }));

    // Private again: the punched pages read zero (memslot A's punch hit its file offset 0x1000..0x5000).
    vm.convert({ gpa: START, size: SIZE }, 'private');
    expect(await step()).toEqual(row({ main: 0n, a: 0n, hole: FAULTED, b: FAULTED }));
    await r.write(pages.map((p, i) => [p, W(i)] as const));
    pages.forEach((p, i) => {
      if (region(i) === 'main' || region(i) === 'a') priv.set(p, W(i));
    });

    // Shared (no discard), then private with discard: every memslot's shared backing is dropped.
    vm.convert({ gpa: START, size: SIZE }, 'shared');
    expect(await step(inSlots)).toEqual(row({ main: S, a: S, b: S }));
    expect(vm.convert({ gpa: START, size: SIZE }, 'private', { discard: true })).toEqual({
      gpa: START,
      size: SIZE,
      to: 'private',
      attributes: PRIVATE,
      discarded: [
        { slot: main.slot, addressSpace: 0, what: 'shared-backing', gpa: START, size: 0x2000 },
        { slot: a.slot, addressSpace: 0, what: 'shared-backing', gpa: 0x20_0000, size: 0x4000 },
        { slot: b.slot, addressSpace: 0, what: 'shared-backing', gpa: 0x20_6000, size: 0x4000 },
      ],
    });
    expect(pages.filter((_, i) => region(i) !== 'hole').map((p) => u64(vm.memslotAt(p)!.view(p, 8)))).toEqual(Array(10).fill(0n));
    expect(await step()).toEqual(row({ main: W, a: W, hole: FAULTED, b: FAULTED }));

    // One page of A back to shared: the private range splits around it.
    vm.convert({ gpa: 0x20_1000, size: PAGE }, 'shared');
    expect(vm.privateRanges()).toEqual([
      { gpa: START, size: 0x3000 },
      { gpa: 0x20_2000, size: 0x8000 },
    ]);
    expect(await step()).toEqual(row({ main: W, a: (i) => (i === 3 ? 0n : W(i)), hole: FAULTED, b: FAULTED }));

    vm.convert({ gpa: START, size: SIZE }, 'shared');
    expect(vm.privateRanges()).toEqual([]);
    expect(await step(inSlots)).toEqual(row({ main: 0n, a: 0n, b: 0n }));
  });
});

swPrivate.describe('memory-fault exits', () => {
  const P = 0x20_0000;

  test('a private gfn in a memslot without guest_memfd: KVM_RUN gives a memory-fault exit (private, page gpa, size 4096, EFAULT) again and again until the page is shared', async () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (a, io) => {
      a.label('load');
      a.mov('rax', mem(64, { disp: P + 0x18 }));
      io.print('rax');
      io.done();
    });
    const plain = h.vm.addMemslot({ gpa: P, size: 0x2000 });
    setU64(plain.view(P + 0x18, 8), 0x1234n);
    h.vm.convert({ gpa: P, size: PAGE }, 'private');
    const expected = { kind: 'memory-fault', exitReason: ExitReason.MEMORY_FAULT, flags: 8n, gpa: BigInt(P), size: 4096n, private: true, errno: 14 };
    for (let i = 0; i < 2; i++) {
      expect(g.vcpu.runSync({ timeoutMs: RUN_MS })).toEqual(expected);
      expect(g.vcpu.getRegs().rip).toBe(BigInt(g.label('load')));
    }
    // Through runUntilDone's onExit: the handler makes the page shared and re-enters.
    const seen: VcpuExit[] = [];
    const r = await g.runUntilDone({
      timeoutMs: RUN_MS,
      onExit: (exit, guest) => {
        seen.push(exit);
        if (exit.kind !== 'memory-fault') return false;
        guest.vm.convert({ gpa: exit.gpa, size: exit.size }, 'shared');
        return true;
      },
    });
    expect(seen).toEqual([expected]);
    expect(r.prints).toEqual([0x1234n]);
  });

  test('a private gfn whose guest_memfd memslot was deleted: memory-fault exit with the private flag; made shared, the same access is MMIO', async () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (a, io) => {
      a.mov(mem(64, { disp: P }), 0x4444);
      a.mov('rax', mem(64, { disp: P }));
      io.print('rax');
      io.sync(1);
      a.label('load');
      a.mov('rax', mem(64, { disp: P }));
      io.print('rax');
      io.done();
    });
    const gmem = h.vm.createGuestMemfd({ size: 0x2000 });
    const slot = h.vm.addMemslot({ gpa: P, size: 0x2000, guestMemfd: gmem });
    h.vm.convert({ gpa: P, size: 0x2000 }, 'private');
    const exits: VcpuExit[] = [];
    const done = g.runUntilDone({ timeoutMs: RUN_MS, onSync: () => slot.delete(), onExit: (exit) => (exits.push(exit), false) });
    const err = await done.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UnexpectedExitError);
    expect(exits).toEqual([{ kind: 'memory-fault', exitReason: ExitReason.MEMORY_FAULT, flags: 8n, gpa: BigInt(P), size: 4096n, private: true, errno: 14 }]);
    expect(g.vcpu.getRegs().rip).toBe(BigInt(g.label('load')));
    expect(h.vm.memslotAt(P)).toBeUndefined();
    expect(h.vm.privateRanges()).toEqual([{ gpa: P, size: 0x2000 }]); // attributes outlive the memslot
    expect(gmem.boundRanges()).toEqual([]);

    h.vm.convert({ gpa: P, size: PAGE }, 'shared');
    const mmio = g.vcpu.runSync({ timeoutMs: RUN_MS });
    expect(mmio).toMatchObject({ kind: 'mmio', address: BigInt(P), length: 8, isWrite: false });
  });

  test('convertOnMemoryFault fixes the faults conversion can fix, by converting to shared: no guest_memfd, or a closed one (discard skipped with the reason)', async () => {
    using h = newVm('sw-protected');
    const X = 0x20_0000; // plain memslot
    const Y = 0x30_0000; // guest_memfd memslot whose file the host closes
    using g = longGuest(h.vm, (a, io) => {
      a.mov(mem(64, { disp: Y }), 0xb2);
      a.mov('rax', mem(64, { disp: Y }));
      io.print('rax');
      io.sync(1);
      a.mov('rax', mem(64, { disp: X }));
      io.print('rax');
      a.mov('rax', mem(64, { disp: Y }));
      io.print('rax');
      io.done();
    });
    const x = h.vm.addMemslot({ gpa: X, size: PAGE });
    const gmemY = h.vm.createGuestMemfd({ size: PAGE });
    const y = h.vm.addMemslot({ gpa: Y, size: PAGE, guestMemfd: gmemY });
    setU64(x.view(X, 8), 0xa1n);
    setU64(y.view(Y, 8), 0xb1n);
    h.vm.convert({ gpa: X, size: PAGE }, 'private');
    h.vm.convert({ gpa: Y, size: PAGE }, 'private');
    const r = await g.runUntilDone({ timeoutMs: RUN_MS, convertOnMemoryFault: { discard: true }, onSync: () => gmemY.close() });
    // 0xb2 was private (in the file); after the close the guest reads the shared copy.
    expect(r.prints).toEqual([0xb2n, 0xa1n, 0xb1n]);
    expect(r.conversions).toEqual([
      {
        gpa: X,
        size: PAGE,
        to: 'shared',
        attributes: 0,
        discarded: [{ slot: x.slot, addressSpace: 0, what: 'guest_memfd', gpa: X, size: PAGE, skipped: 'memslot has no guest_memfd' }],
      },
      {
        gpa: Y,
        size: PAGE,
        to: 'shared',
        attributes: 0,
        discarded: [{ slot: y.slot, addressSpace: 0, what: 'guest_memfd', gpa: Y, size: PAGE, skipped: 'its guest_memfd is closed' }],
      },
    ]);
    expect(h.vm.privateRanges()).toEqual([]);
  });

  test('convertOnMemoryFault where conversion cannot help (memslot deleted): the page becomes shared and the access turns into an MMIO exit', async () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (a, io) => {
      a.mov('rax', mem(64, { disp: P }));
      io.print('rax');
      io.done();
    });
    const gmem = h.vm.createGuestMemfd({ size: PAGE });
    h.vm.addMemslot({ gpa: P, size: PAGE, guestMemfd: gmem }).delete();
    h.vm.convert({ gpa: P, size: PAGE }, 'private');
    const err = await g.runUntilDone({ timeoutMs: RUN_MS, convertOnMemoryFault: true }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(UnexpectedExitError);
    expect((err as UnexpectedExitError).exit).toMatchObject({ kind: 'mmio', address: BigInt(P), length: 8, isWrite: false });
    expect(h.vm.privateRanges()).toEqual([]);
  });

  test('a private-only memslot (userspace_addr 0): private accesses work, discard to private is skipped; a shared access fails KVM_RUN with EFAULT and no memory-fault exit', async () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (a, io) => {
      a.mov(mem(64, { disp: P + 8 }), 0x77);
      a.mov('rax', mem(64, { disp: P + 8 }));
      io.print('rax');
      io.sync(1);
      a.label('shared_load');
      a.mov('rax', mem(64, { disp: P + 8 }));
      io.done();
    });
    const gmem = h.vm.createGuestMemfd({ size: PAGE });
    const slot = h.vm.addMemslot({ gpa: P, size: PAGE, guestMemfd: gmem, backing: { kind: 'none' } });
    expect(slot.userspaceAddr).toBe(0n);
    expect(h.vm.convert({ gpa: P, size: PAGE }, 'private', { discard: true }).discarded).toEqual([
      { slot: slot.slot, addressSpace: 0, what: 'shared-backing', gpa: P, size: PAGE, skipped: 'memslot has no shared backing' },
    ]);
    const err = await g.runUntilDone({ timeoutMs: RUN_MS, onSync: () => void h.vm.convert({ gpa: P, size: PAGE }, 'shared') }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(KvmError);
    expect((err as KvmError).code).toBe('EFAULT');
    expect((err as KvmError).syscall).toBe('ioctl(KVM_RUN)');
    expect(g.vcpu.getRegs().rip).toBe(BigInt(g.label('shared_load')));
  });
});

// ---------------------------------------------------------------------------
// Guest-requested conversions (KVM_HC_MAP_GPA_RANGE), as the kernel's
// private_mem_conversions_test: the guest asks, the host converts with discard.

let labelN = 0;

/** Asserts (code) that each of `npages` pages from `base` holds its gpa + `plus`, or 0 when plus is null. */
function expectPages(a: Assembler, io: GuestIo, base: number, npages: number, plus: number | null, code: number): void {
  const l = `expect_${labelN++}`;
  a.mov('rbx', base).mov('r9', npages);
  a.label(l);
  a.mov('rax', mem(64, { base: 'rbx' }));
  if (plus === null) a.cmp('rax', 0);
  else a.mov('rdx', 'rbx').add('rdx', plus).cmp('rax', 'rdx');
  io.assert('e', code);
  a.add('rbx', PAGE).dec('r9').jnz(l);
}

/** Writes gpa + `plus` into each page. */
function fillPages(a: Assembler, base: number, npages: number, plus: number): void {
  const l = `fill_${labelN++}`;
  a.mov('rbx', base).mov('r9', npages);
  a.label(l);
  a.mov('rdx', 'rbx')
    .add('rdx', plus)
    .mov(mem(64, { base: 'rbx' }), 'rdx');
  a.add('rbx', PAGE).dec('r9').jnz(l);
}

/** KVM_HC_MAP_GPA_RANGE(gpa, npages, private ? ENCRYPTED : 0); RAX must come back 0. */
function mapGpaRange(a: Assembler, io: GuestIo, insn: 'vmcall' | 'vmmcall', gpa: number, npages: number, toPrivate: boolean, code: number): void {
  a.mov('eax', Number(KVM_HC_MAP_GPA_RANGE))
    .mov('ebx', gpa)
    .mov('ecx', npages)
    .mov('edx', toPrivate ? Number(KVM_MAP_GPA_RANGE_ENCRYPTED) : 0);
  a[insn]();
  a.cmp('rax', 0);
  io.assert('e', code);
}

/**
 * The conversion flow of one vCPU over its own range. Syncs s+1..s+4 let the
 * host write shared data (s+1, s+3) and look at the shared backing (s+2, s+4).
 */
function conversionFlow(a: Assembler, io: GuestIo, base: number, npages: number, s: number, insn: 'vmcall' | 'vmmcall'): void {
  io.sync(s + 1); // host writes gpa + 0x11
  expectPages(a, io, base, npages, 0x11, 1);
  a.label(`hc_${s}`);
  mapGpaRange(a, io, insn, base, npages, true, 2);
  expectPages(a, io, base, npages, null, 3); // fresh private memory is zero
  fillPages(a, base, npages, 0x22);
  expectPages(a, io, base, npages, 0x22, 4);
  io.sync(s + 2); // host: the shared backing was dropped, the private writes are not in it
  mapGpaRange(a, io, 'vmmcall', base, npages, false, 5);
  expectPages(a, io, base, npages, null, 6); // the shared copy was dropped on the way to private
  io.sync(s + 3); // host writes gpa + 0x33
  expectPages(a, io, base, npages, 0x33, 7);
  mapGpaRange(a, io, 'vmmcall', base, npages, true, 8);
  expectPages(a, io, base, npages, null, 9); // the private copy was punched on the way to shared
  fillPages(a, base, npages, 0x44);
  expectPages(a, io, base, npages, 0x44, 10);
  io.sync(s + 4);
}

/** The host side of conversionFlow's syncs. */
function hostSide(vm: Vm, base: number, npages: number, s: number, seen: string[]): (n: number) => void {
  const pages = Array.from({ length: npages }, (_, i) => base + i * PAGE);
  const fill = (plus: number) => pages.forEach((p) => setU64(vm.memslotAt(p)!.view(p, 8), BigInt(p + plus)));
  const shared = () => pages.map((p) => u64(vm.memslotAt(p)!.view(p, 8)));
  return (n) => {
    const state = `private=${pages.map((p) => (vm.isPrivate(p) ? 1 : 0)).join('')} shared=${hexes(shared()).join(',')}`;
    seen.push(`${n}: ${state}`);
    if (n === s + 1) fill(0x11);
    if (n === s + 3) fill(0x33);
  };
}

/** Runs a vCPU built by hand (not a Guest) with the same handling as runUntilDone({ mapGpaRange: true }). */
async function runVcpu(vm: Vm, vcpu: Vcpu, onSync: (n: number) => void | Promise<void>): Promise<{ syncs: number[]; conversions: ConversionRecord[] }> {
  const out = { syncs: [] as number[], conversions: [] as ConversionRecord[] };
  for (;;) {
    const exit = await vcpu.run({ timeoutMs: RUN_MS });
    if (exit.kind === 'io' && exit.port === UCALL_PORT && exit.direction === 'out') {
      const cmd = new DataView(exit.data.buffer, exit.data.byteOffset, 4).getUint32(0, true);
      const arg = Number(vcpu.getRegs().rsi);
      if (cmd === Ucall.DONE) return out;
      if (cmd !== Ucall.SYNC) throw new Error(`vCPU ${vcpu.id}: ucall ${cmd} (argument ${arg}) at rip 0x${vcpu.getRegs().rip.toString(16)}`);
      out.syncs.push(arg);
      await onSync(arg);
      continue;
    }
    if (exit.kind === 'hypercall' && exit.nr === KVM_HC_MAP_GPA_RANGE) {
      const [gpa, npages, attrs] = exit.args as [bigint, bigint, bigint];
      out.conversions.push(vm.convert({ gpa, size: npages * BigInt(PAGE) }, attrs & KVM_MAP_GPA_RANGE_ENCRYPTED ? 'private' : 'shared', { discard: true }));
      exit.ret = 0n;
      continue;
    }
    throw new UnexpectedExitError(exit, vcpu.getRegs().rip);
  }
}

const shape = (rs: readonly ConversionRecord[]) =>
  rs.map((c) => `${c.to} 0x${c.gpa.toString(16)}+0x${c.size.toString(16)} ${c.discarded.map((d) => d.what).join(',')}`);

swPrivate.describe('guest-requested conversions: KVM_HC_MAP_GPA_RANGE', () => {
  const BASE0 = 0x10_0000;
  const BASE1 = 0x18_0000;
  const NPAGES = 4;

  test("one vCPU: RAX 0 for each request, the host's shared data visible, fresh private memory zero, private writes kept from the host; vmcall is patched into vmmcall on AMD", async () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (a, io) => {
      conversionFlow(a, io, BASE0, NPAGES, 0, 'vmcall');
      io.done();
    });
    g.enableMapGpaRangeExits();
    const seen: string[] = [];
    const r = await g.runUntilDone({ timeoutMs: RUN_MS, mapGpaRange: true, onSync: hostSide(h.vm, BASE0, NPAGES, 0, seen) });
    expect(seen).toEqual([
      '1: private=0000 shared=0x0,0x0,0x0,0x0',
      '2: private=1111 shared=0x0,0x0,0x0,0x0',
      '3: private=0000 shared=0x0,0x0,0x0,0x0',
      '4: private=1111 shared=0x0,0x0,0x0,0x0',
    ]);
    expect(r.syncs).toEqual([1, 2, 3, 4]);
    expect(shape(r.conversions)).toEqual([
      'private 0x100000+0x4000 shared-backing',
      'shared 0x100000+0x4000 guest_memfd',
      'private 0x100000+0x4000 shared-backing',
    ]);
    expect(h.vm.privateRanges()).toEqual([{ gpa: BASE0, size: NPAGES * PAGE }]);
    // KVM_X86_QUIRK_FIX_HYPERCALL_INSN: the instruction that is not the CPU's own is rewritten in guest memory.
    const hc = g.label('hc_0') + 20; // after the four movs
    expect([...g.view(hc, 3)]).toEqual(svm ? [0x0f, 0x01, 0xd9] : [0x0f, 0x01, 0xc1]);
  });

  test('requests KVM refuses itself never exit: unaligned gpa or npages 0 -> -KVM_EINVAL; any request without KVM_CAP_EXIT_HYPERCALL enabled -> -KVM_ENOSYS', async () => {
    const program = (a: Assembler, io: GuestIo) => {
      for (const [gpa, npages] of [
        [BASE0 + 0x800, 1],
        [BASE0, 0],
        [BASE0, 1],
      ] as const) {
        a.mov('eax', 12).mov('ebx', gpa).mov('ecx', npages).mov('edx', 0x10).vmmcall();
        io.print('rax');
      }
      io.done();
    };
    {
      using h = newVm('sw-protected');
      using g = longGuest(h.vm, program);
      g.enableMapGpaRangeExits();
      const r = await g.runUntilDone({ timeoutMs: RUN_MS, mapGpaRange: true });
      expect(hexes(r.prints)).toEqual(hexes([KVM_EINVAL, KVM_EINVAL, 0n]));
      expect(shape(r.conversions)).toEqual(['private 0x100000+0x1000 shared-backing']);
      expect(r.exits).toBe(5); // 3 prints, 1 hypercall, done
    }
    {
      using h = newVm('sw-protected');
      using g = longGuest(h.vm, program);
      const r = await g.runUntilDone({ timeoutMs: RUN_MS, mapGpaRange: true });
      // The capability is checked before the arguments.
      expect(hexes(r.prints)).toEqual(hexes([KVM_ENOSYS, KVM_ENOSYS, KVM_ENOSYS]));
      expect(r.conversions).toEqual([]);
      expect(h.vm.privateRanges()).toEqual([]);
    }
  });

  test('two vCPUs, each converting its own range, running at once (they meet at a barrier while both ranges are private)', async () => {
    using h = newVm('sw-protected');
    const { vm } = h;
    const CODE1 = 0x14000;
    using g = longGuest(vm, (a, io) => {
      conversionFlow(a, io, BASE0, NPAGES, 0, 'vmmcall');
      io.done();
    });
    g.enableMapGpaRangeExits();
    // vCPU 1: its own code in the same memslot, its own stack, the same CPU state otherwise.
    const asm1 = new Assembler({ bits: 64, origin: CODE1 });
    conversionFlow(asm1, new GuestIo(asm1), BASE1, NPAGES, 10, 'vmmcall');
    emitUcall(asm1, Ucall.DONE);
    asm1.hlt();
    const code1 = asm1.assemble();
    expect(code1.bytes.length).toBeLessThan(MAILBOX - CODE1);
    expect(0x10000 + g.program.bytes.length).toBeLessThanOrEqual(CODE1);
    g.view(CODE1, code1.bytes.length).set(code1.bytes);
    using vcpu1 = vm.createVcpu(1);
    vcpu1.setCpuid(vm.supportedCpuid());
    vcpu1.setSregs(g.vcpu.getSregs());
    vcpu1.setRegs({ ...g.vcpu.getRegs(), rip: BigInt(CODE1), rsp: 0xc000n });

    let arrived = 0;
    let release!: () => void;
    const released = new Promise<void>((resolve) => (release = resolve));
    const atBarrier: string[] = [];
    const barrier = async (who: string) => {
      if (++arrived === 2) {
        atBarrier.push(JSON.stringify(vm.privateRanges()));
        release();
      }
      await released;
      atBarrier.push(who);
    };
    const seen0: string[] = [];
    const seen1: string[] = [];
    const host0 = hostSide(vm, BASE0, NPAGES, 0, seen0);
    const host1 = hostSide(vm, BASE1, NPAGES, 10, seen1);
    const [r0, r1] = await Promise.all([
      g.runUntilDone({
        timeoutMs: RUN_MS,
        mapGpaRange: true,
        onSync: async (n) => {
          host0(n);
          if (n === 2) await barrier('vcpu0');
        },
      }),
      runVcpu(vm, vcpu1, async (n) => {
        host1(n);
        if (n === 12) await barrier('vcpu1');
      }),
    ]);
    expect(atBarrier[0]).toBe(
      JSON.stringify([
        { gpa: BASE0, size: NPAGES * PAGE },
        { gpa: BASE1, size: NPAGES * PAGE },
      ]),
    );
    expect(atBarrier.slice(1).sort()).toEqual(['vcpu0', 'vcpu1']);
    expect(r0.syncs).toEqual([1, 2, 3, 4]);
    expect(r1.syncs).toEqual([11, 12, 13, 14]);
    const perVcpu = (s: number) => [
      `${s + 1}: private=0000 shared=0x0,0x0,0x0,0x0`,
      `${s + 2}: private=1111 shared=0x0,0x0,0x0,0x0`,
      `${s + 3}: private=0000 shared=0x0,0x0,0x0,0x0`,
      `${s + 4}: private=1111 shared=0x0,0x0,0x0,0x0`,
    ];
    expect(seen0).toEqual(perVcpu(0));
    expect(seen1).toEqual(perVcpu(10));
    expect(shape(r0.conversions)).toEqual([
      'private 0x100000+0x4000 shared-backing',
      'shared 0x100000+0x4000 guest_memfd',
      'private 0x100000+0x4000 shared-backing',
    ]);
    expect(shape(r1.conversions)).toEqual([
      'private 0x180000+0x4000 shared-backing',
      'shared 0x180000+0x4000 guest_memfd',
      'private 0x180000+0x4000 shared-backing',
    ]);
    expect(vm.privateRanges()).toEqual([
      { gpa: BASE0, size: NPAGES * PAGE },
      { gpa: BASE1, size: NPAGES * PAGE },
    ]);
  });
});

swPrivate.describe('KVM_PRE_FAULT_MEMORY on a sw-protected VM', () => {
  function expectPreFaultError(vcpu: Vcpu, range: { gpa: number; size: number }, code: string): KvmError {
    const e = expectKernel(() => vcpu.preFaultMemory(range), code);
    expect(e.syscall).toBe('ioctl(KVM_PRE_FAULT_MEMORY)');
    expect(e.request).toEqual({ gpa: BigInt(range.gpa), size: BigInt(range.size), flags: 0 });
    return e;
  }

  test('inside a memslot (shared or private): done, nothing remains; the guest then reads the pre-faulted private page as zero', async () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (a, io) => {
      a.mov('rax', mem(64, { disp: 0x18_0000 }));
      io.print('rax');
      io.done();
    });
    setU64(g.view(0x18_0000, 8), 0x5an);
    expect(g.vcpu.preFaultMemory({ gpa: 0x10_0000, size: 0x4000 })).toEqual({ gpa: 0x10_4000n, size: 0n });
    h.vm.convert({ gpa: 0x18_0000, size: 0x4000 }, 'private');
    expect(g.vcpu.preFaultMemory({ gpa: 0x18_0000, size: 0x4000 })).toEqual({ gpa: 0x18_4000n, size: 0n });
    expect((await g.runUntilDone({ timeoutMs: RUN_MS })).prints).toEqual([0n]);
  });

  test('partly outside: partial progress returns the remainder (no error); the remainder alone is ENOENT; entirely outside is ENOENT', () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (_a, io) => io.done());
    const end = g.memslot.gpa + g.memslot.size;
    expect(g.vcpu.preFaultMemory({ gpa: end - 0x2000, size: 0x4000 })).toEqual({ gpa: BigInt(end), size: 0x2000n });
    expectPreFaultError(g.vcpu, { gpa: end, size: 0x2000 }, 'ENOENT');
    expectPreFaultError(g.vcpu, { gpa: 0x1000_0000, size: PAGE }, 'ENOENT');
    // Unaligned: judged before the kernel (lib/rules/vcpu.ts), with the kernel's EINVAL.
    const unaligned = expectRule(() => g.vcpu.preFaultMemory({ gpa: 0x10_0800, size: PAGE }), AlignmentError, 'page-alignment');
    expect(unaligned.kernelErrno).toBe(22);
    expectRule(() => g.vcpu.preFaultMemory({ gpa: 0x10_0000, size: 0 }), KvmRuleError, 'pre-fault-range-empty');
  });

  test('a private gfn KVM cannot back: EFAULT (no memslot: EFAULT, not ENOENT), with a memory-fault exit left in kvm_run', () => {
    using h = newVm('sw-protected');
    using g = longGuest(h.vm, (_a, io) => io.done());
    const P = 0x20_0000;
    h.vm.addMemslot({ gpa: P, size: 0x2000 }); // no guest_memfd
    h.vm.convert({ gpa: P, size: PAGE }, 'private');
    const run = g.vcpu.runPage;
    run.setUint32(8, 0, true);
    expectPreFaultError(g.vcpu, { gpa: P, size: PAGE }, 'EFAULT');
    expect({ reason: run.getUint32(8, true), flags: run.getBigUint64(32, true), gpa: run.getBigUint64(40, true), size: run.getBigUint64(48, true) }).toEqual({
      reason: 39,
      flags: 8n,
      gpa: BigInt(P),
      size: 4096n,
    });
    // Shared, the same gfn pre-faults; the next one is private too, so a range over both stops after one page.
    h.vm.convert({ gpa: P + PAGE, size: PAGE }, 'private');
    h.vm.convert({ gpa: P, size: PAGE }, 'shared');
    expect(g.vcpu.preFaultMemory({ gpa: P, size: 0x2000 })).toEqual({ gpa: BigInt(P + PAGE), size: BigInt(PAGE) });
    // No memslot: a shared gfn is ENOENT, a private one EFAULT.
    const Q = 0x40_0000;
    expectPreFaultError(g.vcpu, { gpa: Q, size: PAGE }, 'ENOENT');
    h.vm.convert({ gpa: Q, size: PAGE }, 'private');
    expectPreFaultError(g.vcpu, { gpa: Q, size: PAGE }, 'EFAULT');
  });
});

swPrivate.describe('rules only a private-memory VM can hit, checked first and confirmed by the kernel', () => {
  test('memory attributes: PRIVATE is accepted; an unsupported bit is AttributeRuleError memory-attributes-unsupported, and raw EINVAL', () => {
    using h = newVm('sw-protected');
    const { vm } = h;
    expect(vm.capabilities().memoryAttributes).toEqual({ private: true, bits: PRIVATE });
    vm.setMemoryAttributes({ gpa: 0x10_0000, size: 0x2000 }, PRIVATE);
    expect(vm.attributeRanges()).toEqual([{ gfn: 0x100, npages: 2, attributes: PRIVATE }]);
    const before = tables(vm);
    for (const attributes of [1 << 0, PRIVATE | (1 << 0), 1 << 4]) {
      const e = expectRule(() => vm.setMemoryAttributes({ gpa: 0x10_0000, size: PAGE }, attributes), AttributeRuleError, 'memory-attributes-unsupported');
      expect(e.details).toEqual({ attributes, supported: PRIVATE });
      const k = expectKernelAgrees(e, () => raw.setMemoryAttributes(vm, { address: 0x10_0000, size: PAGE, attributes }));
      expect(k.code).toBe('EINVAL');
      expect(tables(vm)).toEqual(before);
    }
  });

  // 6.12 offers this VM type no create flag; 7.3 offers 'mmap' but never
  // 'init-shared' (kvm_arch_supports_gmem_init_shared() is false with private
  // memory). The flags refused are those KVM_CAP_GUEST_MEMFD_FLAGS lacks.
  test("guest_memfd create flags this VM type does not offer ('init-shared' at least) are refused (GuestMemfdRuleError), raw EINVAL", () => {
    using h = newVm('sw-protected');
    const { vm } = h;
    const supported = vm.capabilities().guestMemfdFlagBits;
    expect(supported & 2).toBe(0);
    const kept = vm.createGuestMemfd({ size: PAGE });
    const before = tables(vm, [kept]);
    const refused = (
      [
        [['init-shared'], 2],
        [['mmap'], 1],
        [['mmap', 'init-shared'], 3],
      ] as const
    ).filter(([, bits]) => (bits & ~supported) !== 0);
    expect(refused.length).toBeGreaterThanOrEqual(2);
    for (const [flags, bits] of refused) {
      const e = expectRule(() => vm.createGuestMemfd({ size: PAGE, flags: [...flags] }), GuestMemfdRuleError, 'guest-memfd-flags');
      expect(e.details).toEqual({ flags: bits, supported });
      expect(e.kernelErrno).toBe(22);
      expectKernelAgrees(e, () => raw.createGuestMemfd(vm, { size: PAGE, flags: bits }));
      expect(vm.guestMemfds()).toEqual([kept]);
      expect(tables(vm, [kept])).toEqual(before);
    }
  });

  defaultVmRefusesGmemSlots.test(
    'a default VM creates a guest_memfd but refuses to bind it: MemslotFlagsError, raw EINVAL, while the same region without KVM_MEM_GUEST_MEMFD is accepted',
    () => {
      using h = newVm('default');
      const { vm } = h;
      expect(vm.capabilities().guestMemfd).toBe(false);
      const gmem = vm.createGuestMemfd({ size: 0x4000 });
      const before = tables(vm, [gmem]);
      const e = expectRule(() => vm.addMemslot({ gpa: 0x10_0000, size: 0x4000, guestMemfd: gmem }), MemslotFlagsError, 'memslot-flags');
      expect(e.flags).toBe(4);
      expect(tables(vm, [gmem])).toEqual(before);
      using backing = Mapping.anonymousShared(0x4000);
      const region = {
        slot: 0,
        flags: 4,
        guestPhysAddr: 0x10_0000,
        memorySize: 0x4000,
        userspaceAddr: backing.address,
        guestMemfdOffset: 0,
        guestMemfd: gmem.fd,
      };
      expectKernelAgrees(e, () => raw.setUserMemoryRegion2(vm, region));
      raw.setUserMemoryRegion2(vm, { ...region, flags: 0, guestMemfd: 0 });
      raw.setUserMemoryRegion2(vm, { ...region, flags: 0, guestMemfd: 0, memorySize: 0 });
      expect(tables(vm, [gmem])).toEqual(before);
    },
  );
});

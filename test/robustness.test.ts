// Robustness: what happens to every object after close, whether anything
// leaks (fds, mappings) over many cycles, what stale memory views do, whether
// misuse of the raw/native layer can crash the process, and how the library
// behaves across processes (KVM answers EIO to VM ioctls from any process but
// the VM's creator), across exec (nothing is inherited) and in worker threads
// (the addon's per-environment cleanup releases what a worker left open).
//
// The cross-process and worker tests run the built library (a child process
// or worker cannot load the TypeScript sources): a beforeAll runs
// `tsc -p tsconfig.json` (lib/ -> dist/lib/) unless dist/ is already newer
// than every lib/ source, and fails loudly if it does not compile. Their
// child scripts are in test/fixtures/.
//
// Tests that need a guest_memfd memslot use a VM type that can bind one: the
// default VM here (Linux 6.18), 'sw-protected' in the test VM (Linux 6.12,
// whose default VM refuses KVM_MEM_GUEST_MEMFD memslots). guest_memfd mmap is
// used where KVM_CAP_GUEST_MEMFD_FLAGS offers mmap and init-shared.
import { spawn, spawnSync } from 'node:child_process';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import {
  Cap,
  ClosedError,
  type GuestMemfd,
  type GuestMemfdFlagName,
  Kvm,
  KvmError,
  Mapping,
  MemslotChangeError,
  raw,
  type Vm,
  type VmTypeName,
} from '../lib/index.js';
import { native } from '../lib/binding/native.js';
import { ensureDist, gate, needs, pickVmType, thrown } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fixture = (name: string): string => join(root, 'test', 'fixtures', name);

// ---- one VM open for the whole file -----------------------------------------

// KVM flips a static key in the scheduler (preempt notifiers) each time the
// number of VMs in the system goes 0 -> 1 or 1 -> 0, and the kernel patches
// its code to do so. In the test VM (QEMU TCG, 2 vCPUs) the thousands of VM
// lifetimes below made that patching crash the guest kernel twice (an int3
// oops in __schedule: a TCG cross-modifying-code race, not a KVM rule). With
// one VM open throughout, the count never returns to 0. It is opened before
// every baseline, so the counts below include it on both sides.
const anchorKvm = Kvm.open();
const anchorVm = anchorKvm.createVm();
afterAll(() => {
  anchorVm.close();
  anchorKvm.close();
});

// ---- what this host offers -------------------------------------------------

interface GmemSetup {
  /** A VM type whose VMs accept KVM_MEM_GUEST_MEMFD memslots, or null. */
  vmType: VmTypeName | null;
  /** Create flags for guest_memfds: mmap+init-shared where offered, else none. */
  flags: GuestMemfdFlagName[];
  /** Whether GuestMemfd.map() works (mmap and init-shared offered). */
  mappable: boolean;
}

const gmemSetup: GmemSetup = (() => {
  using kvm = Kvm.open();
  for (const type of ['default', 'sw-protected'] as const) {
    if (type !== 'default' && !kvm.capabilities().vmTypes.includes(type)) continue;
    using vm = kvm.createVm({ type });
    const caps = vm.capabilities();
    if (!caps.guestMemfd) continue;
    const mappable = caps.guestMemfdFlags.includes('mmap') && caps.guestMemfdFlags.includes('init-shared');
    return { vmType: type, flags: mappable ? ['mmap', 'init-shared'] : [], mappable };
  }
  return { vmType: null, flags: [], mappable: false };
})();
const noGmem = gmemSetup.vmType === null;
const gmemSlots = pickVmType('KVM_MEM_GUEST_MEMFD memslots (KVM_CAP_GUEST_MEMFD on the VM fd)', (t) => needs.guestMemfd(t));
const withGmem = gate(gmemSlots.need);
const withMappableGmem = gate(gmemSlots.need, needs.gmemFlags(['mmap', 'init-shared'], gmemSlots.type ?? 'default'));
const gmemVmType: VmTypeName = gmemSetup.vmType ?? 'default';

// ---- helpers ---------------------------------------------------------------

function fdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** "fd -> target" for every open fd of this process whose target names KVM. */
function kvmFdLinks(): string[] {
  const out: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (/kvm/.test(target)) out.push(`${fd} -> ${target}`);
    } catch {
      // the directory's own fd, closed once listed
    }
  }
  return out.sort();
}

function fdTarget(fd: number): string | null {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return null;
  }
}

/**
 * What a guest_memfd's fd links to: an anon inode up to 6.18
 * ('anon_inode:[kvm-gmem]'), an inode of guest_memfd's own pseudo-filesystem
 * on 7.3 ('/[kvm-gmem] (deleted)').
 */
const GMEM_TARGET = /^(anon_inode:\[kvm-gmem\]|\/\[kvm-gmem\] \(deleted\))$/;
const GMEM_MAPPING = / (anon_inode:\[kvm-gmem\]|\/\[kvm-gmem\] \(deleted\))$/;

/**
 * Lines of /proc/self/maps for MAP_SHARED mappings (perms like 'rw-s'). Every
 * mapping this library makes is shared (anonymous shmem shows as
 * '/dev/zero (deleted)', guest_memfd as GMEM_TARGET says); V8 and
 * malloc only make private ones, whose number changes as the heap grows.
 */
function sharedMappings(): string[] {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => /^\S+ \S{3}s /.test(l));
}

/**
 * Number of /proc/self/maps lines other than private anonymous ones: shared
 * mappings, files, [heap], [stack], [vdso]... The private anonymous ones are
 * V8's and malloc's, and their number moves as the JS heap grows (measured:
 * 121 -> 135 lines over 1,000 cycles, all of them private anonymous), so an
 * exact comparison of the whole file would test V8, not this package.
 */
function mapsLinesButPrivateAnon(): number {
  return readFileSync('/proc/self/maps', 'utf8')
    .split('\n')
    .filter((l) => {
      const f = l.trim().split(/\s+/);
      return f.length > 1 && (f[1]?.[3] === 's' || f.length > 5);
    }).length;
}

function expectClosed(f: () => unknown, object: string, operation: string): void {
  const e = thrown(f);
  expect(e).toBeInstanceOf(ClosedError);
  const c = e as ClosedError;
  expect(c.code).toBe('ERR_KVM_CLOSED');
  expect(c.object).toBe(object);
  expect(c.operation).toBe(operation);
  expect(c.message).toBe(`${object} is closed: cannot ${operation}`);
}

function expectTypeError(f: () => unknown): void {
  expect(thrown(f)).toBeInstanceOf(TypeError);
}

/** A detached byte view: length 0, reads undefined, writes vanish. */
function expectDetached(u: Uint8Array): void {
  expect(u.byteLength).toBe(0);
  expect(u.length).toBe(0);
  expect(u.buffer.byteLength).toBe(0);
  expect(u[0]).toBeUndefined();
  u[0] = 0x77;
  expect(u[0]).toBeUndefined();
  expect(u.byteLength).toBe(0);
}

/** A DataView over a detached buffer: its buffer has length 0 and every accessor throws TypeError. */
function expectDetachedDataView(d: DataView): void {
  expect(d.buffer.byteLength).toBe(0);
  expectTypeError(() => d.byteLength);
  expectTypeError(() => d.getUint8(0));
  expectTypeError(() => d.setUint8(0, 1));
}

function createGmem(vm: Vm, size = 0x20000): GuestMemfd {
  return vm.createGuestMemfd({ size, flags: gmemSetup.flags });
}

// ---- 1. use after close ----------------------------------------------------

describe('use after close', () => {
  test('Kvm: every operation that needs the fd throws ClosedError; close() is idempotent', () => {
    const kvm = Kvm.open();
    const fd = kvm.fd;
    kvm.close();
    kvm.close();
    expect(kvm.closed).toBe(true);
    expect(fdTarget(fd)).not.toBe('/dev/kvm');
    expectClosed(() => kvm.fd, 'Kvm', 'read its fd');
    expectClosed(() => kvm.checkExtension('USER_MEMORY2'), 'Kvm', 'check an extension');
    expectClosed(() => kvm.checkExtension(Cap.GUEST_MEMFD), 'Kvm', 'check an extension');
    expectClosed(() => kvm.capabilities(), 'Kvm', 'read capabilities');
    expectClosed(() => kvm.createVm(), 'Kvm', 'create a VM');
    expectClosed(() => kvm.vcpuMmapSize(), 'Kvm', 'read the vCPU mmap size');
    expectClosed(() => kvm.supportedCpuid(), 'Kvm', 'read supported CPUID');
    // What does not need the fd still answers.
    expect(kvm.path).toBe('/dev/kvm');
    expect(kvm.apiVersion).toBe(12);
  });

  test('Kvm: capabilities asked before close are not answered after it', () => {
    const kvm = Kvm.open();
    expect(kvm.capabilities().userMemory2).toBe(raw.checkExtension(kvm, Cap.USER_MEMORY2) > 0);
    kvm.close();
    expectClosed(() => kvm.capabilities(), 'Kvm', 'read capabilities');
  });

  test('closing the Kvm does not close or break the VMs it created', () => {
    const kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    const userMemory2 = raw.checkExtension(vm.fd, Cap.USER_MEMORY2);
    kvm.close();
    expect(vm.closed).toBe(false);
    expect(fdTarget(vm.fd)).toBe('anon_inode:kvm-vm');
    expect(vm.checkExtension('USER_MEMORY2')).toBe(userMemory2);
    const slot = vm.addMemslot({ gpa: 0, size: 0x4000 });
    slot.view()[0] = 9;
    expect(slot.view()[0]).toBe(9);
    expect(vm.memslots()).toEqual([slot]);
    if (!noGmem) {
      const g = createGmem(vm);
      g.allocate(0, 0x1000);
      expect(vm.guestMemfds()).toEqual([g]);
    }
    // What a vCPU needs from /dev/kvm was asked while the Kvm was open.
    const vcpu = vm.createVcpu();
    expect(fdTarget(vcpu.fd)).toBe('anon_inode:kvm-vcpu:0');
    vcpu.setCpuid(vm.supportedCpuid());
    expect(vm.supportedCpuid().length).toBeGreaterThan(0);
  });

  test('Vm: every operation that needs the fd throws ClosedError; close() is idempotent', () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm();
    const fd = vm.fd;
    const slot = vm.addMemslot({ gpa: 0, size: 0x1000 });
    expect(vm.memslots()).toEqual([slot]);
    vm.close();
    vm.close();
    expect(vm.closed).toBe(true);
    expect(fdTarget(fd)).not.toBe('anon_inode:kvm-vm');
    expectClosed(() => vm.fd, 'Vm', 'read its fd');
    expectClosed(() => vm.checkExtension('GUEST_MEMFD'), 'Vm', 'check an extension');
    expectClosed(() => vm.capabilities(), 'Vm', 'read capabilities');
    expectClosed(() => vm.createGuestMemfd({ size: 0x1000 }), 'Vm', 'create a guest_memfd');
    expectClosed(() => vm.addMemslot({ gpa: 0, size: 0x1000 }), 'Vm', 'add a memslot');
    expectClosed(() => vm.setMemoryAttributes({ gpa: 0, size: 0x1000 }, 0), 'Vm', 'set memory attributes');
    expectClosed(() => vm.convert({ gpa: 0, size: 0x1000 }, 'private'), 'Vm', 'convert memory');
    expectClosed(() => vm.enableCap('EXIT_HYPERCALL', [0]), 'Vm', 'enable a capability');
    expectClosed(() => vm.createVcpu(), 'Vm', 'create a vCPU');
    // The package's tables describe a VM that no longer exists: empty.
    expect(vm.memslots()).toEqual([]);
    expect(vm.guestMemfds()).toEqual([]);
    expect(vm.attributeRanges()).toEqual([]);
    expect(vm.memslotAt(0)).toBeUndefined();
  });

  test('Vm: capabilities asked before close are not answered after it', () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm();
    expect(vm.capabilities().userMemory2).toBe(raw.checkExtension(vm.fd, Cap.USER_MEMORY2) > 0);
    vm.close();
    expectClosed(() => vm.capabilities(), 'Vm', 'read capabilities');
  });

  withGmem.test('GuestMemfd: every operation that needs the fd throws ClosedError; close() is idempotent', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    const g = createGmem(vm);
    const fd = g.fd;
    const slot = vm.addMemslot({ gpa: 0x100000, size: 0x20000, guestMemfd: g });
    expect(g.boundRanges()).toHaveLength(1);
    g.close();
    g.close();
    expect(g.closed).toBe(true);
    expect(fdTarget(fd) ?? '').not.toMatch(GMEM_TARGET);
    expectClosed(() => g.fd, 'GuestMemfd', 'read its fd');
    expectClosed(() => g.allocate(0, 0x1000), 'GuestMemfd', 'allocate');
    expectClosed(() => g.punchHole(0, 0x1000), 'GuestMemfd', 'punch a hole');
    expectClosed(() => g.map(), 'GuestMemfd', 'map');
    expectClosed(() => g.stat(), 'GuestMemfd', 'stat');
    // Closing the file drops its bindings in the kernel; the memslot stays
    // until deleted, and the VM no longer lists the file.
    expect(g.boundRanges()).toEqual([]);
    expect(g.size).toBe(0x20000);
    expect(vm.guestMemfds()).toEqual([]);
    expect(vm.memslots()).toEqual([slot]);
    slot.delete();
    expect(vm.memslots()).toEqual([]);
  });

  test('Memslot after delete: delete() is idempotent, view() throws ClosedError, changes are refused', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const slot = vm.addMemslot({ gpa: 0x10000, size: 0x4000, slot: 3 });
    slot.delete();
    slot.delete();
    expect(slot.deleted).toBe(true);
    expect(vm.memslots()).toEqual([]);
    expectClosed(() => slot.view(), 'Memslot', 'create a view');
    for (const change of [() => slot.move(0x20000), () => slot.setDirtyLogging(true)]) {
      const e = thrown(change);
      expect(e).toBeInstanceOf(MemslotChangeError);
      expect((e as MemslotChangeError).rule).toBe('memslot-not-found');
      expect(vm.memslots()).toEqual([]);
    }
    // Its description stays readable.
    expect([slot.slot, slot.gpa, slot.size]).toEqual([3, 0x10000, 0x4000]);
    // The id and the range are free again.
    const again = vm.addMemslot({ gpa: 0x10000, size: 0x4000, slot: 3 });
    expect(vm.memslots()).toEqual([again]);
  });

  test('Memslot after its VM closed: delete() is a no-op, view() throws ClosedError, changes name the closed Vm', () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm();
    const slot = vm.addMemslot({ gpa: 0, size: 0x4000 });
    vm.close();
    expect(slot.deleted).toBe(true);
    slot.delete();
    expectClosed(() => slot.view(), 'Memslot', 'create a view');
    expectClosed(() => slot.move(0x10000), 'Vm', 'move a memslot');
    expectClosed(() => slot.setDirtyLogging(true), 'Vm', 'change memslot flags');
  });

  test('Mapping after unmap: every view operation throws ClosedError; unmap() is idempotent', () => {
    const m = Mapping.anonymousShared(0x2000);
    m.bytes()[0] = 1;
    m.unmap();
    m.unmap();
    expect(m.unmapped).toBe(true);
    expectClosed(() => m.bytes(), 'Mapping', 'create a view');
    expectClosed(() => m.bytes(0, 16), 'Mapping', 'create a view');
    expectClosed(() => m.dataView(), 'Mapping', 'create a view');
    expectClosed(() => m.discard(0, 0x1000), 'Mapping', 'discard pages');
    expect(m.length).toBe(0x2000);
    expect(sharedMappings().some((l) => l.startsWith(m.address.toString(16) + '-'))).toBe(false);
  });

  test('RawFd: close() is idempotent and the raw functions refuse a closed one with ClosedError', () => {
    using kvm = Kvm.open();
    const rawVm = raw.createVm(kvm, 0);
    const fd = rawVm.fd;
    expect(fdTarget(fd)).toBe('anon_inode:kvm-vm');
    rawVm.close();
    rawVm.close();
    expect(rawVm.closed).toBe(true);
    expect(fdTarget(fd)).not.toBe('anon_inode:kvm-vm');
    expectClosed(() => rawVm.fd, 'RawFd', 'read its fd');
    expectClosed(() => raw.checkExtension(rawVm, Cap.USER_MEMORY2), 'RawFd', 'read its fd');
    expectClosed(() => raw.createGuestMemfd(rawVm, { size: 0x1000 }), 'RawFd', 'read its fd');
    expectClosed(
      () =>
        raw.setUserMemoryRegion2(rawVm, {
          slot: 0,
          flags: 0,
          guestPhysAddr: 0,
          memorySize: 0,
          userspaceAddr: 0,
          guestMemfdOffset: 0,
          guestMemfd: 0,
        }),
      'RawFd',
      'read its fd',
    );
    expectClosed(() => raw.isCloexec(rawVm), 'RawFd', 'read its fd');
  });

  withGmem.test('RawFd from raw.createGuestMemfd: fstat/fallocate refuse it after close', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    const g = raw.createGuestMemfd(vm, { size: 0x1000 });
    expect(raw.fstat(g).size).toBe(0x1000);
    g.close();
    g.close();
    expectClosed(() => raw.fstat(g), 'RawFd', 'read its fd');
    expectClosed(() => raw.fallocate(g, 1, 0, 0x1000), 'RawFd', 'read its fd');
  });

  test('using: Kvm, Vm, Mapping and RawFd are closed at the end of the block, in reverse order', () => {
    let kvm: Kvm;
    let vm: Vm;
    let m: Mapping;
    let rawVm: raw.RawFd;
    {
      using k = Kvm.open();
      using v = k.createVm();
      using mm = Mapping.anonymousShared(0x1000);
      using r = raw.createVm(k, 0);
      [kvm, vm, m, rawVm] = [k, v, mm, r];
      expect([kvm.closed, vm.closed, m.unmapped, rawVm.closed]).toEqual([false, false, false, false]);
    }
    expect([kvm.closed, vm.closed, m.unmapped, rawVm.closed]).toEqual([true, true, true, true]);
  });

  withGmem.test('using: a GuestMemfd already closed by its VM is disposed again without error', () => {
    let g: GuestMemfd;
    {
      using kvm = Kvm.open();
      using vm = kvm.createVm({ type: gmemVmType });
      using gm = createGmem(vm);
      g = gm;
      vm.close();
      expect(g.closed).toBe(true);
    }
    expect(g.closed).toBe(true);
  });

  withGmem.test('closing a Vm closes its guest_memfds and releases its memslots and their backings', () => {
    using kvm = Kvm.open();
    const baseline = kvmFdLinks().length;
    const sharedBaseline = sharedMappings().length;
    const vm = kvm.createVm({ type: gmemVmType });
    const g1 = createGmem(vm);
    const g2 = createGmem(vm, 0x10000);
    const anon = vm.addMemslot({ gpa: 0, size: 0x10000 });
    const bound = vm.addMemslot({
      gpa: 0x100000,
      size: 0x20000,
      guestMemfd: g1,
      backing: gmemSetup.mappable ? { kind: 'guest-memfd' } : { kind: 'anonymous' },
    });
    const anonView = anon.view();
    const boundView = bound.view();
    anonView[0] = 1;
    boundView[0] = 2;
    const gmemView = gmemSetup.mappable ? g2.map().bytes() : null;
    if (gmemView) gmemView[0] = 3;
    const fds = [vm.fd, g1.fd, g2.fd];
    expect(kvmFdLinks()).toHaveLength(baseline + 3);
    expect(sharedMappings().length).toBeGreaterThan(sharedBaseline);

    vm.close();
    expect([g1.closed, g2.closed]).toEqual([true, true]);
    expect([anon.deleted, bound.deleted]).toEqual([true, true]);
    for (const fd of fds) expect(fdTarget(fd) ?? '').not.toMatch(/kvm/);
    expect(kvmFdLinks()).toHaveLength(baseline);
    expect(sharedMappings()).toHaveLength(sharedBaseline);
    expectDetached(anonView);
    expectDetached(boundView);
    if (gmemView) expectDetached(gmemView);
    expect(g1.boundRanges()).toEqual([]);
  });
});

// ---- 2. no fd or mapping leaks ---------------------------------------------

describe('no fd or mapping leaks over 1,000 VM lifetimes', () => {
  const CYCLES = 1000;

  interface Cycle {
    vm: Vm;
    gmem: GuestMemfd;
    gmemMapping: Mapping | null;
    anon: ReturnType<Vm['addMemslot']>;
    bound: ReturnType<Vm['addMemslot']>;
  }

  function openCycle(kvm: Kvm): Cycle {
    const vm = kvm.createVm({ type: gmemVmType });
    const gmem = createGmem(vm);
    const gmemMapping = gmemSetup.mappable ? gmem.map() : null;
    const anon = vm.addMemslot({ gpa: 0, size: 0x10000 });
    const bound = vm.addMemslot({
      gpa: 0x100000,
      size: 0x20000,
      guestMemfd: gmem,
      backing: gmemSetup.mappable ? { kind: 'guest-memfd' } : { kind: 'anonymous' },
    });
    anon.view()[1] = 1;
    bound.view()[1] = 1;
    return { vm, gmem, gmemMapping, anon, bound };
  }

  function measure(): { fds: number; kvm: string[]; shared: string[]; lines: number } {
    return { fds: fdCount(), kvm: kvmFdLinks(), shared: sharedMappings(), lines: mapsLinesButPrivateAnon() };
  }

  withGmem.test(
    'open VM, guest_memfd (+ map), 2 memslots, delete one, close only the VM: counts return to baseline exactly',
    () => {
      using kvm = Kvm.open();
      // One cycle first, so lazily created state (capabilities) is not counted.
      openCycle(kvm).vm.close();
      const base = measure();
      // The measure sees what a cycle holds: 2 more fds, and the shared mappings.
      const probe = openCycle(kvm);
      const held = measure();
      expect(held.fds).toBe(base.fds + 2);
      expect(held.kvm).toHaveLength(base.kvm.length + 2);
      // anonymous memslot + (guest_memfd mapping, or the bound slot's anonymous backing)
      expect(held.shared.length).toBe(base.shared.length + 2);
      expect(held.lines).toBe(base.lines + 2);
      probe.vm.close();

      for (let i = 0; i < CYCLES; i++) {
        const c = openCycle(kvm);
        c.anon.delete();
        c.vm.close();
      }
      const after = measure();
      expect(after.fds).toBe(base.fds);
      expect(after.kvm).toEqual(base.kvm);
      expect(after.shared).toEqual(base.shared);
      expect(after.lines).toBe(base.lines);
    },
    300_000,
  );

  withGmem.test(
    'the same, closing every child explicitly in reverse order first',
    () => {
      using kvm = Kvm.open();
      openCycle(kvm).vm.close();
      const base = measure();
      for (let i = 0; i < CYCLES; i++) {
        const c = openCycle(kvm);
        c.anon.delete();
        c.bound.delete();
        c.gmemMapping?.unmap();
        c.gmem.close();
        expect(c.vm.memslots()).toEqual([]);
        c.vm.close();
      }
      const after = measure();
      expect(after.fds).toBe(base.fds);
      expect(after.kvm).toEqual(base.kvm);
      expect(after.shared).toEqual(base.shared);
      expect(after.lines).toBe(base.lines);
    },
    300_000,
  );
});

// ---- 3. stale views and misuse of the raw/native layer ----------------------

describe('stale views never reach unmapped memory', () => {
  test('memslot.view() of an anonymous-backed memslot detaches when the memslot is deleted', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const slot = vm.addMemslot({ gpa: 0, size: 0x4000 });
    const u = slot.view();
    const part = slot.view(0x1000, 0x100);
    u[0] = 0x11;
    expect(u.byteLength).toBe(0x4000);
    slot.delete();
    expectDetached(u);
    expectDetached(part);
  });

  test('memslot.view() detaches when the VM is closed', () => {
    using kvm = Kvm.open();
    const vm = kvm.createVm();
    const u = vm.addMemslot({ gpa: 0, size: 0x4000 }).view();
    u[0] = 0x11;
    vm.close();
    expectDetached(u);
  });

  withMappableGmem.test('gmem.map().bytes() and dataView() detach when the guest_memfd is closed', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    const g = createGmem(vm);
    const u = g.map().bytes();
    const d = g.map().dataView(8, 8);
    u[0] = 5;
    d.setUint32(0, 0xdeadbeef, true);
    expect(u[8]).toBe(0xef);
    g.close();
    expectDetached(u);
    expectDetachedDataView(d);
  });

  withMappableGmem.test('a guest_memfd-backed memslot: old views live as long as the file mapping, which the guest_memfd owns', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    const g = createGmem(vm);
    const slot = vm.addMemslot({ gpa: 0x100000, size: 0x20000, guestMemfd: g, backing: { kind: 'guest-memfd' } });
    const u = slot.view();
    u[3] = 0x33;
    slot.delete();
    // The memory is the guest_memfd's mapping, still mapped: the view still
    // reads it, but the deleted memslot hands out no new view.
    expect(u.byteLength).toBe(0x20000);
    expect(u[3]).toBe(0x33);
    expect(g.map().bytes()[3]).toBe(0x33);
    expectClosed(() => slot.view(), 'Memslot', 'create a view');
    g.close();
    expectDetached(u);
  });

  test('Mapping.bytes() and dataView() detach on unmap() and on using-disposal', () => {
    const m = Mapping.anonymousShared(0x2000);
    const u = m.bytes(0x1000, 16);
    const d = m.dataView();
    u[0] = 1;
    m.unmap();
    expectDetached(u);
    expectDetachedDataView(d);
    let v: Uint8Array;
    {
      using n = Mapping.anonymousShared(0x1000);
      v = n.bytes();
      v[0] = 1;
    }
    expectDetached(v);
  });

  test('munmap/madvise/mappingView of an already unmapped mapping throw TypeError; its view is detached', () => {
    const m = native.mmap(-1, 0x1000, 3, 0x21, 0, false);
    native.munmap(m.handle, [m.buffer]);
    expect(m.buffer.byteLength).toBe(0);
    expectTypeError(() => native.munmap(m.handle, []));
    expectTypeError(() => native.madvise(m.handle, 0, 0x1000, 9));
    expectTypeError(() => native.mappingView(m.handle, 0, 0x1000));
  });
});

describe('misuse of the raw and native layers throws TypeError, never crashes', () => {
  const goodRegion = { slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 0x1000, userspaceAddr: 0, guestMemfdOffset: 0, guestMemfd: 0 };
  const badNumbers: unknown[] = ['0', -1, NaN, Infinity, 1.5, 2 ** 64, {}, null, undefined, [], -1n, 2n ** 64n];
  // For optional fields, where undefined/null mean "the default".
  const badPresent = badNumbers.filter((v) => v !== undefined && v !== null);

  test('raw.setUserMemoryRegion2: a bad value in any field is a TypeError and nothing reaches the kernel', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    for (const field of Object.keys(goodRegion) as (keyof typeof goodRegion)[]) {
      for (const bad of badNumbers) {
        // u32 fields take numbers only; u64 fields also take bigints below 2^64.
        expectTypeError(() => raw.setUserMemoryRegion2(vm.fd, { ...goodRegion, [field]: bad } as never));
      }
    }
    expectTypeError(() => raw.setUserMemoryRegion2(vm.fd, { ...goodRegion, slot: -1 }));
    expectTypeError(() => raw.setUserMemoryRegion2(vm.fd, {} as never));
    expectTypeError(() => raw.setUserMemoryRegion2('x' as never, goodRegion));
    expectTypeError(() => raw.setUserMemoryRegion2({ fd: -3 }, goodRegion));
    expect(vm.memslots()).toEqual([]);
    // Nothing reached the kernel: slot 0 at gpa 0 is still free there.
    const slot = vm.addMemslot({ slot: 0, gpa: 0, size: 0x1000 });
    expect(vm.memslots()).toEqual([slot]);
  });

  test('raw.fallocate, fstat, checkExtension, createVm, createGuestMemfd, setMemoryAttributes, enableCap, isCloexec with bad arguments', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const fds = fdCount();
    expectTypeError(() => raw.fallocate('x' as never, 1, 0, 0x1000));
    expectTypeError(() => raw.fallocate(-1, 1, 0, 0x1000));
    for (const bad of badNumbers) {
      expectTypeError(() => raw.fallocate(vm, bad as never, 0, 0x1000));
      expectTypeError(() => raw.fallocate(vm, 1, bad as never, 0x1000));
      expectTypeError(() => raw.fallocate(vm, 1, 0, bad as never));
      expectTypeError(() => raw.checkExtension(kvm, bad as never));
      expectTypeError(() => raw.createVm(kvm, bad as never));
      expectTypeError(() => raw.createGuestMemfd(vm, { size: bad as never }));
      expectTypeError(() => raw.setMemoryAttributes(vm, { address: bad as never, size: 0x1000, attributes: 0 }));
    }
    for (const bad of badPresent) {
      expectTypeError(() => raw.createGuestMemfd(vm, { size: 0x1000, flags: bad as never }));
      expectTypeError(() => raw.setMemoryAttributes(vm, { address: 0, size: 0x1000, attributes: 0, flags: bad as never }));
    }
    expectTypeError(() => raw.fstat({ fd: -5 }));
    expectTypeError(() => raw.fstat(2 ** 31));
    expectTypeError(() => raw.checkExtension(NaN, Cap.USER_MEMORY2));
    expectTypeError(() => raw.isCloexec(1.5));
    expectTypeError(() => raw.enableCap(vm, Cap.EXIT_HYPERCALL, [NaN]));
    expectTypeError(() => raw.enableCap(vm, Cap.EXIT_HYPERCALL, [-1]));
    expectTypeError(() => raw.enableCap(vm, Cap.EXIT_HYPERCALL, [2n ** 64n]));
    expectTypeError(() => raw.enableCap(vm, Cap.EXIT_HYPERCALL, [0, 0, 0, 0, 0]));
    expectTypeError(() => raw.enableCap(vm, Cap.EXIT_HYPERCALL, 'x' as never));
    expectTypeError(() => raw.enableCap(vm, -1));
    // No fd was created by any of these.
    expect(fdCount()).toBe(fds);
    expect(vm.memslots()).toEqual([]);
  });

  test('native.munmap, madvise and mappingView accept only a live mapping handle of this addon', () => {
    for (const bad of [new ArrayBuffer(4096), new Uint8Array(4096), new SharedArrayBuffer(4096), Buffer.alloc(4096).buffer, {}, null, 1]) {
      expectTypeError(() => native.munmap(bad as never, []));
      expectTypeError(() => native.madvise(bad as never, 0, 4096, 9));
      expectTypeError(() => native.mappingView(bad as never, 0, 4096));
    }
    const m = native.mmap(-1, 0x2000, 3, 0x21, 0, false);
    try {
      expectTypeError(() => native.munmap(m.handle, 'x' as never));
      expect(thrown(() => native.madvise(m.handle, 0x1000, 0x2000, 9))).toBeInstanceOf(RangeError);
      expect(thrown(() => native.mappingView(m.handle, 0x1000, 0x2000))).toBeInstanceOf(RangeError);
      expectTypeError(() => native.madvise(m.handle, NaN, 0x1000, 9));
      // A view made by range is the same memory as the first view.
      const v = native.mappingView(m.handle, 0x1000, 0x1000);
      new Uint8Array(v)[0] = 7;
      expect(new Uint8Array(m.buffer)[0x1000]).toBe(7);
      // Buffers that are not over this mapping are left alone by munmap.
      const other = new ArrayBuffer(16);
      native.munmap(m.handle, [m.buffer, v, other]);
      expect([m.buffer.byteLength, v.byteLength, other.byteLength]).toEqual([0, 0, 16]);
    } finally {
      try {
        native.munmap(m.handle, []);
      } catch {
        /* already unmapped */
      }
    }
  });

  test('native.mmap, close and openDevice with bad arguments', () => {
    const shared = sharedMappings().length;
    expectTypeError(() => native.mmap('x' as never, 4096, 3, 0x21, 0, false));
    expectTypeError(() => native.mmap(-1.5, 4096, 3, 0x21, 0, false));
    expectTypeError(() => native.mmap(-2, 4096, 3, 0x21, 0, false));
    expectTypeError(() => native.mmap(-1, -4096, 3, 0x21, 0, false));
    expectTypeError(() => native.mmap(-1, 2 ** 64, 3, 0x21, 0, false));
    expectTypeError(() => native.mmap(-1, 4096, 3, 0x21 | 0x10 /* MAP_FIXED */, 0, false));
    expectTypeError(() => native.close(-1));
    expectTypeError(() => native.close(2 ** 31));
    expectTypeError(() => native.close('3' as never));
    expectTypeError(() => native.openDevice(42 as never));
    expect(sharedMappings()).toHaveLength(shared);
  });

  test('native.checkExtensionBind and checkExtensions: bad arguments are TypeErrors or RangeErrors, nothing is written', () => {
    using kvm = Kvm.open();
    const check = native.checkExtensionBind(kvm.fd);
    expect(check(Cap.USER_MEMORY2)).toBe(kvm.checkExtension(Cap.USER_MEMORY2));
    for (const bad of [-1, 1.5, NaN, '5', 2 ** 31, undefined]) expectTypeError(() => check(bad as never));
    expectTypeError(() => native.checkExtensionBind(-1));
    const out = new Int32Array([7, 7]);
    expectTypeError(() => native.checkExtensions(kvm.fd, new Uint32Array([1, 2]) as never, out));
    expectTypeError(() => native.checkExtensions(kvm.fd, new Int32Array([1, 2]), [0, 0] as never));
    expectTypeError(() => native.checkExtensions(kvm.fd, new Int32Array([1, -2]), out));
    expect(thrown(() => native.checkExtensions(kvm.fd, new Int32Array([1, 2, 3]), out))).toBeInstanceOf(RangeError);
    expect([...out]).toEqual([7, 7]);
  });

  test('native.runSyncBind: bad arguments are TypeErrors; a bound run after unbind throws instead of touching the old page', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    using vcpu = vm.createVcpu();
    const page = vcpu.runPage.buffer as ArrayBuffer;
    expectTypeError(() => native.runSyncBind(vcpu.fd, new ArrayBuffer(16)));
    expectTypeError(() => native.runSyncBind(-1, page));
    expectTypeError(() => native.runSyncUnbind((() => 0) as never));
    const run = native.runSyncBind(vcpu.fd, page);
    for (const bad of [-1, 1.5, NaN, '5', 2 ** 31]) expectTypeError(() => run(bad as never));
    native.runSyncUnbind(run);
    native.runSyncUnbind(run);
    expect(thrown(() => run())).toBeInstanceOf(Error);
    expect(String(thrown(() => run()))).toContain('closed');
  });

  test('every native function: no arguments, or too many string arguments, is a TypeError', () => {
    const names = Object.keys(native).filter((k) => typeof (native as unknown as Record<string, unknown>)[k] === 'function');
    expect(names).toEqual(expect.arrayContaining(['setUserMemoryRegion2', 'fallocate', 'mmap', 'munmap', 'close', 'setErrorFactory']));
    const fds = fdCount();
    for (const name of names) {
      const f = (native as unknown as Record<string, (...a: unknown[]) => unknown>)[name] as (...a: unknown[]) => unknown;
      expect(
        thrown(() => f()),
        `${name}()`,
      ).toBeInstanceOf(TypeError);
      expect(
        thrown(() => f(...Array<string>(9).fill('x'))),
        `${name}('x' x 9)`,
      ).toBeInstanceOf(TypeError);
      // With Node's codes, as the TypeScript layer's argument errors.
      expect(
        thrown(() => f()),
        `${name}()`,
      ).toMatchObject({ code: expect.stringMatching(/^ERR_INVALID_ARG_(TYPE|VALUE)$/) });
      expect(
        thrown(() => f(...Array<string>(9).fill('x'))),
        `${name}('x' x 9)`,
      ).toMatchObject({ code: expect.stringMatching(/^ERR_INVALID_ARG_(TYPE|VALUE)$/) });
    }
    expect(fdCount()).toBe(fds);
    // The error factory is still the package's: a kernel failure is a KvmError.
    const e = thrown(() => native.checkExtension(fds + 1000, Cap.USER_MEMORY2));
    expect(e).toBeInstanceOf(KvmError);
    expect((e as KvmError).code).toBe('EBADF');
  });
});

// ---- 4-7. other processes and threads (the built library) -------------------

interface Attempt {
  ok: boolean;
  value?: unknown;
  isKvmError?: boolean;
  name?: string;
  code?: string;
  errno?: number;
  syscall?: string;
  request?: Record<string, unknown> | null;
  message?: string;
}

interface ForeignReport {
  vm: Record<'checkExtension' | 'setUserMemoryRegion2' | 'rawSetUserMemoryRegion2' | 'createGuestMemfd' | 'setMemoryAttributes' | 'enableCap', Attempt>;
  system: { checkExtension: Attempt; ownVm: Attempt };
  gmem: { fstat: Attempt; allocate: Attempt; mapped: Attempt | null } | null;
}

/** Whether every .ts file under lib/ has its .js under dist/lib/, at least as new. */
function runChild(
  args: string[],
  stdio: (number | 'ignore' | 'pipe')[],
): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: stdio as never });
    let stdout = '';
    let stderr = '';
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ code, signal, stdout, stderr }));
  });
}

interface WorkerReport {
  fds: number[];
  links: string[];
  byte: number;
  gmemByte: number | null;
}

/** Starts the fixture worker; `report` resolves with its message, `exit` with its exit code. */
function startWorker(workerData: unknown): { worker: Worker; report: Promise<WorkerReport>; exit: Promise<number> } {
  const worker = new Worker(fixture('worker-leaves-open.mjs'), { workerData });
  const failed = new Promise<never>((_, reject) => worker.once('error', reject));
  const report = Promise.race([new Promise<WorkerReport>((resolve) => worker.once('message', resolve)), failed]);
  const exit = Promise.race([new Promise<number>((resolve) => worker.once('exit', resolve)), failed]);
  return { worker, report, exit };
}

describe('other processes and threads', () => {
  beforeAll(() => ensureDist(), 600_000);

  const VM_IOCTLS = {
    checkExtension: 'ioctl(KVM_CHECK_EXTENSION)',
    setUserMemoryRegion2: 'ioctl(KVM_SET_USER_MEMORY_REGION2)',
    rawSetUserMemoryRegion2: 'ioctl(KVM_SET_USER_MEMORY_REGION2)',
    createGuestMemfd: 'ioctl(KVM_CREATE_GUEST_MEMFD)',
    setMemoryAttributes: 'ioctl(KVM_SET_MEMORY_ATTRIBUTES)',
    enableCap: 'ioctl(KVM_ENABLE_CAP)',
  } as const;

  test('another process gets EIO, as a typed KvmError, for every VM ioctl on an inherited VM fd; /dev/kvm works there', async () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm();
    const r = await runChild([fixture('foreign-vm.mjs'), JSON.stringify({ gmem: false })], ['ignore', 'pipe', 'pipe', vm.fd, 'ignore', kvm.fd]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as ForeignReport;
    for (const [op, syscall] of Object.entries(VM_IOCTLS)) {
      const a = report.vm[op as keyof typeof VM_IOCTLS];
      expect({ op, ...a, message: undefined, request: undefined }).toEqual({
        op,
        ok: false,
        isKvmError: true,
        name: 'KvmError',
        code: 'EIO',
        errno: 5,
        syscall,
        message: undefined,
        request: undefined,
      });
    }
    // Through the raw layer the error also carries the request that was sent.
    expect(report.vm.rawSetUserMemoryRegion2.request).toMatchObject({ slot: 0, flags: 0, guest_phys_addr: 0, memory_size: 0x1000 });
    expect(report.vm.rawSetUserMemoryRegion2.message).toMatch(/^ioctl\(KVM_SET_USER_MEMORY_REGION2\) failed: EIO .*; sent slot=0 /);
    // /dev/kvm has no owner: system ioctls work in the other process, and a
    // VM it creates there is its own.
    expect(report.system.checkExtension).toEqual({ ok: true, value: kvm.checkExtension('USER_MEMORY2') });
    expect(report.system.ownVm).toEqual({ ok: true, value: { checkExtension: kvm.checkExtension('USER_MEMORY2'), memslotAdded: true } });
    // The parent's VM is untouched and still works for its creator.
    expect(vm.memslots()).toEqual([]);
    const slot = vm.addMemslot({ slot: 0, gpa: 0, size: 0x1000 });
    expect(vm.memslots()).toEqual([slot]);
    expect(vm.checkExtension('USER_MEMORY2')).toBe(kvm.checkExtension('USER_MEMORY2'));
  });

  withGmem.test('a guest_memfd is a plain file: another process can fstat and fallocate it (and mmap it where offered)', async () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    const g = createGmem(vm, 0x10000);
    if (gmemSetup.mappable) g.map().bytes()[0] = 0x5a;
    const cfg = { gmem: true, mappable: gmemSetup.mappable, gmemSize: g.size };
    const r = await runChild([fixture('foreign-vm.mjs'), JSON.stringify(cfg)], ['ignore', 'pipe', 'pipe', vm.fd, g.fd, kvm.fd]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout) as ForeignReport;
    expect(report.vm.createGuestMemfd).toMatchObject({ ok: false, code: 'EIO', syscall: 'ioctl(KVM_CREATE_GUEST_MEMFD)' });
    expect(report.gmem?.fstat).toMatchObject({ ok: true, value: { size: 0x10000 } });
    expect(report.gmem?.allocate).toEqual({ ok: true });
    if (gmemSetup.mappable) {
      expect(report.gmem?.mapped).toEqual({ ok: true, value: { seen: 0x5a } });
      expect(g.map().bytes()[1]).toBe(0xa5);
    } else {
      expect(report.gmem?.mapped).toBeNull();
    }
    expect(g.boundRanges()).toEqual([]);
    expect(vm.guestMemfds()).toEqual([g]);
  });

  test('exec: no KVM fd is inherited by a child process (ls, and node)', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: gmemVmType });
    using rawVm = raw.createVm(kvm, 0);
    const gmem = noGmem ? null : createGmem(vm);
    const rawGmem = noGmem ? null : raw.createGuestMemfd(vm, { size: 0x1000 });
    const mapping = gmem && gmemSetup.mappable ? gmem.map() : null;
    try {
      const ours = [kvm.fd, vm.fd, rawVm.fd, ...(gmem ? [gmem.fd] : []), ...(rawGmem ? [rawGmem.fd] : [])];
      const targets = ours.map(fdTarget);
      expect(targets.slice(0, 3)).toEqual(['/dev/kvm', 'anon_inode:kvm-vm', 'anon_inode:kvm-vm']);
      if (gmem) expect(targets.slice(3)).toEqual([expect.stringMatching(GMEM_TARGET), expect.stringMatching(GMEM_TARGET)]);
      for (const fd of ours) expect(raw.isCloexec(fd)).toBe(true);
      if (mapping) expect(sharedMappings().some((l) => GMEM_MAPPING.test(l))).toBe(true);

      const ls = spawnSync('ls', ['-l', '/proc/self/fd'], { encoding: 'utf8' });
      expect(ls.status).toBe(0);
      expect(ls.stdout).toMatch(/ 0 -> /);
      expect(ls.stdout).not.toMatch(/kvm/);

      const listFds =
        "const fs=require('fs');console.log(JSON.stringify(fs.readdirSync('/proc/self/fd').map(f=>{try{return f+' -> '+fs.readlinkSync('/proc/self/fd/'+f)}catch{return f}})))";
      const child = spawnSync(process.execPath, ['-e', listFds], { encoding: 'utf8' });
      expect(child.status).toBe(0);
      const links = JSON.parse(child.stdout) as string[];
      expect(links.length).toBeGreaterThan(3);
      expect(links.filter((l) => /kvm/.test(l))).toEqual([]);
    } finally {
      rawGmem?.close();
    }
  });

  test('worker thread: the library works there, and what the worker left open is closed when it exits', async () => {
    // A worker that ends at once, so the first Worker's own setup is not counted.
    await new Promise((resolve) => new Worker('', { eval: true }).on('exit', resolve));
    const base = { fds: fdCount(), kvm: kvmFdLinks(), shared: sharedMappings() };
    const gmemFlags = noGmem ? null : gmemSetup.flags;
    const w = startWorker({ vmType: gmemVmType, gmemFlags, mappable: gmemSetup.mappable });
    const report = await w.report;
    expect(await w.exit).toBe(0);
    expect(report.byte).toBe(0x42);
    expect(report.gmemByte).toBe(noGmem ? null : 0x24);
    expect(report.links).toEqual(['/dev/kvm', 'anon_inode:kvm-vm', ...(noGmem ? [] : [expect.stringMatching(GMEM_TARGET)])]);
    expect(fdCount()).toBe(base.fds);
    expect(kvmFdLinks()).toEqual(base.kvm);
    expect(sharedMappings()).toEqual(base.shared);
  });

  test('two worker threads at once, neither closing anything: all released when both exit', async () => {
    await new Promise((resolve) => new Worker('', { eval: true }).on('exit', resolve));
    const base = { fds: fdCount(), kvm: kvmFdLinks(), shared: sharedMappings() };
    const gmemFlags = noGmem ? null : gmemSetup.flags;
    const data = { vmType: gmemVmType, gmemFlags, mappable: gmemSetup.mappable, holdUntilTold: true };
    const workers = [startWorker(data), startWorker(data)];
    // Both hold their objects open at the same time until told to finish.
    const reports = await Promise.all(workers.map((w) => w.report));
    const perWorker = reports[0]?.fds.length ?? 0;
    expect(perWorker).toBe(noGmem ? 2 : 3);
    for (const r of reports) {
      expect(r.byte).toBe(0x42);
      expect(r.links[0]).toBe('/dev/kvm');
    }
    expect(new Set(reports.flatMap((r) => r.fds)).size).toBe(2 * perWorker);
    expect(kvmFdLinks()).toHaveLength(base.kvm.length + 2 * perWorker);
    for (const w of workers) w.worker.postMessage('go');
    expect(await Promise.all(workers.map((w) => w.exit))).toEqual([0, 0]);
    expect(fdCount()).toBe(base.fds);
    expect(kvmFdLinks()).toEqual(base.kvm);
    expect(sharedMappings()).toEqual(base.shared);
  });

  test('finalizer safety net: unclosed VMs that became garbage have their fds closed and memory unmapped after gc', async () => {
    const cfg = { vmType: gmemVmType, gmemFlags: noGmem ? null : gmemSetup.flags, mappable: gmemSetup.mappable };
    const r = await runChild(['--expose-gc', fixture('finalizer-child.mjs'), JSON.stringify(cfg)], ['ignore', 'pipe', 'pipe']);
    // A clean exit also means the addon's teardown did not trip over records
    // the ArrayBuffer finalizers had already freed.
    expect(r.stderr).toBe('');
    expect(r.signal).toBeNull();
    expect(r.code).toBe(0);
    type Counts = { links: string[]; shared: number };
    const report = JSON.parse(r.stdout) as { vms: number; before: Counts; during: Counts; after: Counts; rounds: number };
    expect(report.vms).toBe(10);
    expect(report.during.links.length).toBe(report.before.links.length + report.vms * (noGmem ? 1 : 2));
    expect(report.during.shared).toBeGreaterThan(report.before.shared);
    expect(report.after).toEqual(report.before);
    expect(report.rounds).toBeGreaterThan(0);
    expect(report.rounds).toBeLessThan(100);
  });
});

// guest_memfd files (KVM_CREATE_GUEST_MEMFD): sizes and flags checked before
// the kernel (and the kernel, asked raw, agreeing), no read/write, fallocate
// to allocate and punch holes, and the 6.18 mapping (MMAP + INIT_SHARED).
import { readSync, writeSync, ftruncateSync } from 'node:fs';
import { expect, test } from 'vitest';
import {
  AlignmentError,
  ClosedError,
  GuestMemfdFlag,
  GuestMemfdRuleError,
  KvmError,
  MissingCapabilityError,
  type GuestMemfdFlagName,
  raw,
} from '../lib/index.js';
import { errnoName } from '../lib/errors.js';
import { native } from '../lib/binding/native.js';
import { Mapping } from '../lib/kvm/mapping.js';
import { expectKernel, expectKernelAgrees, expectRule, gate, needs, openKvm, sawEintr, thrown, underSignalStorm } from './helpers.js';

const KEEP_SIZE = 0x01;
const PUNCH_HOLE = 0x02;
const ZERO_RANGE = 0x10;
const EOPNOTSUPP = 95; // Node names it ENOTSUP (the same number on Linux)

// KVM_CREATE_GUEST_MEMFD exists (6.8+); every VM type may create one.
const gmemIoctl = needs.cap('GUEST_MEMFD', 'kvm', { text: 'KVM_CREATE_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD on /dev/kvm)' });
const withGmem = gate(gmemIoctl);
const hasMmap = gate(needs.gmemFlags('mmap', 'default'));
const hasBoth = gate(needs.gmemFlags(['mmap', 'init-shared'], 'default'));

gate(needs.not(gmemIoctl)).test(
  'createGuestMemfd() where the kernel has no guest_memfd: MissingCapabilityError naming KVM_CAP_GUEST_MEMFD, 6.8 and the ioctl',
  () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const err = thrown(() => vm.createGuestMemfd({ size: 4096 }));
    expect(err).toBeInstanceOf(MissingCapabilityError);
    const m = err as MissingCapabilityError;
    expect(m.capability).toBe('KVM_CAP_GUEST_MEMFD');
    expect(m.since).toBe('6.8');
    expect(m.message).toContain('KVM_CREATE_GUEST_MEMFD');
    expect(vm.guestMemfds()).toEqual([]);
    expectKernel(() => raw.createGuestMemfd(vm, { size: 4096 }).close(), 'ENOTTY');
  },
);

withGmem.describe('createGuestMemfd', () => {
  test('creates files of several sizes; stat() gives the size', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    for (const size of [4096, 2 << 20, 1 << 30, 2n ** 40n]) {
      using g = vm.createGuestMemfd({ size });
      expect(g.size).toBe(Number(size));
      expect(g.stat().size).toBe(Number(size));
      expect(raw.fstat(g).size).toBe(Number(size));
      expect(g.flagBits).toBe(0);
      expect(g.flags).toEqual([]);
    }
  });

  test('the VM lists the guest_memfds it created and that are still open', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const a = vm.createGuestMemfd({ size: 4096 });
    const b = vm.createGuestMemfd({ size: 8192 });
    expect(vm.guestMemfds()).toEqual([a, b]);
    a.close();
    expect(vm.guestMemfds()).toEqual([b]);
    vm.close();
    expect(b.closed).toBe(true);
  });

  hasMmap.test('flags by name and by raw bits', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using byName = vm.createGuestMemfd({ size: 4096, flags: ['mmap'] });
    using byBits = vm.createGuestMemfd({ size: 4096, flags: GuestMemfdFlag.MMAP });
    expect(byName.flagBits).toBe(GuestMemfdFlag.MMAP);
    expect(byBits.flagBits).toBe(GuestMemfdFlag.MMAP);
    expect(byBits.flags).toEqual(['mmap']);
  });

  hasBoth.test("'mmap' and 'init-shared' together", () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 4096, flags: ['mmap', 'init-shared'] });
    expect(g.flagBits).toBe(GuestMemfdFlag.MMAP | GuestMemfdFlag.INIT_SHARED);
    expect(g.flags).toEqual(['mmap', 'init-shared']);
    using r = raw.createGuestMemfd(vm, { size: 4096, flags: 3 });
    expect(raw.fstat(r).size).toBe(4096);
  });

  const badSizes: [string, bigint, typeof GuestMemfdRuleError | typeof AlignmentError, string][] = [
    ['size 0', 0n, GuestMemfdRuleError, 'guest-memfd-size'],
    ['size 2^63', 2n ** 63n, GuestMemfdRuleError, 'guest-memfd-size'],
    ['size 2^64 - 4096', 2n ** 64n - 4096n, GuestMemfdRuleError, 'guest-memfd-size'],
    ['an unaligned size (0x1001)', 0x1001n, AlignmentError, 'page-alignment'],
    ['an unaligned size (0x800)', 0x800n, AlignmentError, 'page-alignment'],
  ];
  test.each(badSizes)('%s is refused before the kernel; raw, the kernel says EINVAL', (_name, size, cls, rule) => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const err = expectRule(() => vm.createGuestMemfd({ size }), cls, rule);
    expect(err.kernelErrno).toBe(22);
    expect(err.message).toContain(`0x${size.toString(16)}`);
    if (err instanceof AlignmentError) expect(err.field).toBe('size');
    expect(vm.guestMemfds()).toEqual([]);
    const k = expectKernelAgrees(err, () => raw.createGuestMemfd(vm, { size }).close());
    expect(k.errno).toBe(err.kernelErrno);
    expect(k.syscall).toBe('ioctl(KVM_CREATE_GUEST_MEMFD)');
    expect(k.request).toEqual({ size, flags: 0 });
  });

  test('the largest size below 2^63 is accepted', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 2n ** 63n - 4096n });
    expect(raw.fstat(g).size).toBe(Number(2n ** 63n - 4096n));
  });

  test.each([
    ['bit 2 (0x4)', 1 << 2],
    ['bit 4 (0x10)', 1 << 4],
    ['bit 31', 2 ** 31],
    // The kernel's field is 64 bits: bits 32..63 are judged, not refused as a type.
    ['bit 32, a number', 2 ** 32],
    ['bit 63, a bigint', 1n << 63n],
  ])('a flag no kernel offers, %s, is GuestMemfdRuleError guest-memfd-flags; raw, EINVAL', (_name, bits: number | bigint) => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const err = expectRule(() => vm.createGuestMemfd({ size: 4096, flags: bits }), GuestMemfdRuleError, 'guest-memfd-flags');
    expect(err.details).toMatchObject({ flags: bits });
    expect(err.message).toContain(`0x${bits.toString(16)}`);
    expect(err.message).toContain('KVM_CAP_GUEST_MEMFD_FLAGS');
    expect(vm.guestMemfds()).toEqual([]);
    expectKernelAgrees(err, () => raw.createGuestMemfd(vm, { size: 4096, flags: bits }).close());
  });

  for (const flag of ['mmap', 'init-shared'] as const satisfies readonly GuestMemfdFlagName[]) {
    gate(needs.not(needs.gmemFlags(flag, 'default'))).test(`'${flag}' on a VM that does not offer it is refused by name`, () => {
      using kvm = openKvm();
      using vm = kvm.createVm();
      const err = expectRule(() => vm.createGuestMemfd({ size: 4096, flags: [flag] }), GuestMemfdRuleError, 'guest-memfd-flags');
      expect(err.message).toContain(flag);
      expectKernelAgrees(err, () => raw.createGuestMemfd(vm, { size: 4096, flags: flag === 'mmap' ? 1 : 2 }).close());
    });
  }

  test('an unknown flag name is a TypeError', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    expect(() => vm.createGuestMemfd({ size: 4096, flags: ['huge' as GuestMemfdFlagName] })).toThrow(TypeError);
    // A mask that is no 64-bit value: TypeError (ERR_INVALID_ARG_VALUE) before anything is sent.
    for (const bad of [-1, 2 ** 53, 1.5, -1n, 1n << 64n]) {
      expect(() => vm.createGuestMemfd({ size: 4096, flags: bad }), String(bad)).toThrow(
        expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' }),
      );
    }
  });
});

withGmem.describe('the guest_memfd file', () => {
  test('cannot be read, written or truncated', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 0x4000 });
    const buf = Buffer.alloc(16);
    expect(() => readSync(g.fd, buf, 0, 16, null)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'read' }));
    expect(() => writeSync(g.fd, buf, 0, 16, null)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'write' }));
    // pread/pwrite: the file has no position either.
    expect(() => readSync(g.fd, buf, 0, 16, 0)).toThrow(expect.objectContaining({ code: 'ESPIPE' }));
    expect(() => writeSync(g.fd, buf, 0, 16, 0)).toThrow(expect.objectContaining({ code: 'ESPIPE' }));
    expect(() => ftruncateSync(g.fd, 0x8000)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    expect(g.stat().size).toBe(0x4000);
    // GM-3, GM-6: st_blksize is the page size; each file its own inode, its own size.
    using h = vm.createGuestMemfd({ size: 0x2000 });
    expect(g.stat()).toMatchObject({ size: 0x4000, blksize: 4096 });
    expect(h.stat()).toMatchObject({ size: 0x2000, blksize: 4096 });
    expect(h.stat().ino).not.toBe(g.stat().ino);
  });

  test('close() is idempotent; every operation after it throws ClosedError', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: 0x4000 });
    g.close();
    g.close();
    expect(g.closed).toBe(true);
    expect(() => g.allocate(0, 4096)).toThrow(ClosedError);
    expect(() => g.punchHole(0, 4096)).toThrow(ClosedError);
    expect(() => g.stat()).toThrow(ClosedError);
    expect(() => g.map()).toThrow(ClosedError);
    expect(() => g.fd).toThrow(ClosedError);
  });
});

withGmem.describe('allocate and punchHole (fallocate)', () => {
  const SIZE = 0x10000;

  test('allocate and punch page-aligned ranges inside the file', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: SIZE });
    g.allocate(0, SIZE);
    g.allocate(0x1000, 0x2000);
    g.punchHole(0x2000, 0x4000);
    g.punchHole(0, SIZE);
    expect(g.stat().size).toBe(SIZE);
  });

  test('under a storm of signals the raw call stops with EINTR, allocate() and punchHole() still complete (they repeat it)', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const LEN = 64 << 20; // long enough per call (16,384 folios) that signals land inside it
    using g = vm.createGuestMemfd({ size: LEN });
    underSignalStorm(() => {
      // The storm reaches the syscall: kvm_gmem_allocate() checks signal_pending() per folio.
      expect(
        sawEintr(() => {
          raw.fallocate(g, KEEP_SIZE, 0, LEN);
          g.punchHole(0, LEN);
        }, 1000),
      ).toBe(true);
      for (let i = 0; i < 10; i++) {
        g.allocate(0, LEN);
        g.punchHole(0, LEN);
      }
    });
  });

  test('fstat: the size never changes; guest_memfd does not count its pages in st_blocks (0 on 6.12 and 6.18)', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: SIZE });
    const before = g.stat();
    g.allocate(0, SIZE);
    const allocated = g.stat();
    g.punchHole(0, SIZE);
    const punched = g.stat();
    expect([before.size, allocated.size, punched.size]).toEqual([SIZE, SIZE, SIZE]);
    // The kernel does not update i_blocks for guest_memfd (measured): blocks
    // cannot show allocation. Data through the mapping does (below).
    expect([before.blocks, allocated.blocks, punched.blocks]).toEqual([0, 0, 0]);
  });

  const bad: [string, 'allocate' | 'punchHole', number | bigint, number | bigint, typeof AlignmentError | typeof GuestMemfdRuleError, string, string][] = [
    ['allocate: unaligned offset', 'allocate', 0x800, 0x1000, AlignmentError, 'page-alignment', 'EINVAL'],
    ['allocate: unaligned length', 'allocate', 0, 0x800, AlignmentError, 'page-alignment', 'EINVAL'],
    ['allocate: zero length', 'allocate', 0, 0, GuestMemfdRuleError, 'guest-memfd-range', 'EINVAL'],
    ['allocate: past the end', 'allocate', SIZE, 0x1000, GuestMemfdRuleError, 'guest-memfd-range', 'EINVAL'],
    ['allocate: across the end', 'allocate', SIZE - 0x1000, 0x2000, GuestMemfdRuleError, 'guest-memfd-range', 'EINVAL'],
    ['punchHole: unaligned offset', 'punchHole', 0x800, 0x1000, AlignmentError, 'page-alignment', 'EINVAL'],
    ['punchHole: unaligned length', 'punchHole', 0, 0x1800, AlignmentError, 'page-alignment', 'EINVAL'],
    ['punchHole: zero length', 'punchHole', 0, 0, GuestMemfdRuleError, 'guest-memfd-range', 'EINVAL'],
    ['punchHole: offset + length past the largest file offset', 'punchHole', 2n ** 63n - 4096n, 0x2000, GuestMemfdRuleError, 'guest-memfd-range', 'EFBIG'],
  ];
  test.each(bad)('%s is refused before the kernel; raw fallocate agrees', (_name, op, offset, length, cls, rule, code) => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: SIZE });
    const err = expectRule(() => g[op](offset, length), cls, rule);
    expect(errnoName(err.kernelErrno)).toBe(code);
    if (err instanceof AlignmentError) expect(err.field).toBe(Number(offset) & 0xfff ? 'offset' : 'length');
    const mode = op === 'allocate' ? KEEP_SIZE : PUNCH_HOLE | KEEP_SIZE;
    const k = expectKernelAgrees(err, () => raw.fallocate(g, mode, offset, length));
    expect(k.syscall).toBe('fallocate');
  });

  test('punching past the end succeeds, as in the kernel', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: SIZE });
    g.punchHole(SIZE - 0x1000, 0x10000);
    g.punchHole(SIZE, 0x1000);
    g.punchHole(SIZE * 4, 0x1000);
    raw.fallocate(g, PUNCH_HOLE | KEEP_SIZE, SIZE, 0x1000);
    expect(g.stat().size).toBe(SIZE);
  });

  test.each([
    ['mode 0 (no KEEP_SIZE: the file would grow)', 0, 0, 0x1000, 'ENOTSUP'],
    ['PUNCH_HOLE without KEEP_SIZE', PUNCH_HOLE, 0, 0x1000, 'ENOTSUP'],
    ['ZERO_RANGE | KEEP_SIZE', ZERO_RANGE | KEEP_SIZE, 0, 0x1000, 'ENOTSUP'],
    ['KEEP_SIZE at an unaligned offset', KEEP_SIZE, 0x800, 0x1000, 'EINVAL'],
    ['KEEP_SIZE with an unaligned length', KEEP_SIZE, 0, 0x800, 'EINVAL'],
  ])('raw fallocate: the kernel refuses %s', (_name, mode, offset, length, code) => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: SIZE });
    const k = expectKernel(() => raw.fallocate(g, mode, offset, length), code);
    if (code === 'ENOTSUP') expect(k.errno).toBe(EOPNOTSUPP);
    expect(k.request).toEqual({ fd: g.fd, mode, offset, length });
  });
});

withGmem.describe('map()', () => {
  test("needs the 'mmap' flag (guest-memfd-not-mappable); the kernel's mmap says ENODEV", () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 0x4000 });
    const err = expectRule(() => g.map(), GuestMemfdRuleError, 'guest-memfd-not-mappable');
    expect(err.message).toContain("'mmap'");
    expect(errnoName(err.kernelErrno)).toBe('ENODEV');
    let k: unknown;
    try {
      Mapping.sharedFile(g.fd, 0x4000).unmap();
    } catch (e) {
      k = e;
    }
    expect(k).toBeInstanceOf(KvmError);
    expect((k as KvmError).code).toBe('ENODEV');
    expect((k as KvmError).syscall).toBe('mmap');
  });

  hasMmap.test("refuses a file made without 'init-shared', whose mapping would SIGBUS when touched", () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 0x4000, flags: ['mmap'] });
    const err = expectRule(() => g.map(), GuestMemfdRuleError, 'guest-memfd-not-mappable');
    expect(err.message).toContain("'init-shared'");
    expect(err.message).toContain('SIGBUS');
    // The kernel itself maps it (kernelErrno 0: no syscall error); only a
    // touch would fault. Mapping.sharedFile refuses it too; the native call
    // without the file check shows the kernel's answer (mapped and unmapped
    // here without touching it).
    expect(err.kernelErrno).toBe(0);
    expect(() => Mapping.sharedFile(g.fd, 0x4000)).toThrow(/without 'init-shared'.*SIGBUS/);
    const m = native.mmap(g.fd, 0x4000, 3, 0x01 /* MAP_SHARED */, 0, false);
    expect(m.buffer.byteLength).toBe(0x4000);
    native.munmap(m.handle, [m.buffer]);
  });

  hasBoth.test("with 'mmap' and 'init-shared': data is shared between views, punchHole zeroes it", () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    using g = vm.createGuestMemfd({ size: 0x4000, flags: ['mmap', 'init-shared'] });
    const m = g.map();
    expect(m.length).toBe(0x4000);
    expect(g.map()).toBe(m);
    const a = m.bytes();
    a.fill(0x5a, 0x1000, 0x3000);
    // A second view of another part of the same mapping sees the data.
    const b = m.dataView(0x2000, 0x1000);
    expect(b.getUint32(0x0ff0, true)).toBe(0x5a5a5a5a);
    expect(a[0x0fff]).toBe(0);
    g.punchHole(0x2000, 0x1000);
    expect(b.getUint32(0x0ff0, true)).toBe(0);
    expect(a.subarray(0x2000, 0x3000).every((x) => x === 0)).toBe(true);
    expect(a.subarray(0x1000, 0x2000).every((x) => x === 0x5a)).toBe(true);
    // allocate does not change data that is already there.
    g.allocate(0, 0x4000);
    expect(a[0x1000]).toBe(0x5a);
  });

  hasBoth.test('after close() every view of the mapping has byteLength 0', () => {
    using kvm = openKvm();
    using vm = kvm.createVm();
    const g = vm.createGuestMemfd({ size: 0x4000, flags: ['mmap', 'init-shared'] });
    const m = g.map();
    const view = m.bytes();
    view[0] = 1;
    g.close();
    expect(m.unmapped).toBe(true);
    expect(view.byteLength).toBe(0);
    expect(view[0]).toBeUndefined();
    expect(() => m.bytes()).toThrow(ClosedError);
  });
});

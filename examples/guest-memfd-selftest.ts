#!/usr/bin/env node
// A KVM selftest written with kvm-gmem/selftest: the file checks of the
// kernel's guest_memfd_test (tools/testing/selftests/kvm/guest_memfd_test.c)
// on a default VM, through the raw layer so that every answer is the
// kernel's own. It prints KTAP and exits as kselftest does (0 pass, 1 fail,
// 4 skip), so it runs under the kernel's kselftest/runner.sh as it is.
//
//   node dist/examples/guest-memfd-selftest.js
//
// The check names carry the IDs of the C test's checks (GM-1 ... GM-8).
import { Cap, Falloc, KvmError, Kvm, raw } from '../lib/index.js';
import { assert, assertEq, assertErrno, assertNe, diag, requires, test } from '../lib/selftest/index.js';

const PAGE = 4096;
const TOTAL = 4 * PAGE;
const { KEEP_SIZE, PUNCH_HOLE } = Falloc;

// TEST_REQUIRE(kvm_has_cap(KVM_CAP_GUEST_MEMFD)): else `1..0 # SKIP ...`, exit 4.
requires('GUEST_MEMFD');

// One VM for the whole file, as the C test's vm_create_barebones().
const kvm = Kvm.open();
const vm = raw.createVm(kvm, 0);

test('GM-1 sizes 1..4095 are EINVAL', () => {
  for (let size = 1; size < PAGE; size++) assertErrno(() => raw.createGuestMemfd(vm, { size }), 'EINVAL', `size ${size}`);
});

test("GM-2 each flag bit 0..63: created where the VM's KVM_CAP_GUEST_MEMFD_FLAGS offers it, else EINVAL", () => {
  const offered = BigInt(raw.checkExtension(vm, Cap.GUEST_MEMFD_FLAGS));
  diag(`KVM_CAP_GUEST_MEMFD_FLAGS on the VM: 0x${offered.toString(16)}`);
  for (let bit = 0n; bit < 64n; bit++) {
    const flags = 1n << bit;
    if (offered & flags) raw.createGuestMemfd(vm, { size: PAGE, flags }).close();
    else assertErrno(() => raw.createGuestMemfd(vm, { size: PAGE, flags }), 'EINVAL', `flag bit ${bit}`);
  }
});

test('GM-3 two files at once: each its size and its own inode', () => {
  using a = raw.createGuestMemfd(vm, { size: PAGE });
  using b = raw.createGuestMemfd(vm, { size: 2 * PAGE });
  assertEq(raw.fstat(a).size, PAGE, 'st_size of the first');
  assertEq(raw.fstat(b).size, 2 * PAGE, 'st_size of the second');
  assert(raw.fstat(a).ino !== raw.fstat(b).ino, 'the two files share an inode');
});

test('GM-6 fstat: st_size is the size, st_blksize the page size', () => {
  using f = raw.createGuestMemfd(vm, { size: TOTAL });
  const st = raw.fstat(f);
  assertEq(st.size, TOTAL, 'st_size');
  assertEq(st.blksize, PAGE, 'st_blksize');
});

test('GM-7 the fallocate table on a 4-page file', () => {
  using f = raw.createGuestMemfd(vm, { size: TOTAL });
  // 'success' or the kernel's errno name; the C test checks only success or failure here.
  const result = (mode: number, offset: number, length: number): string => {
    try {
      raw.fallocate(f, mode, offset, length);
      return 'success';
    } catch (e) {
      if (e instanceof KvmError) return e.code;
      throw e;
    }
  };
  const ok = (mode: number, offset: number, length: number, why: string): void => assertEq(result(mode, offset, length), 'success', why);
  const fails = (mode: number, offset: number, length: number, why: string): void => assertNe(result(mode, offset, length), 'success', why);
  ok(KEEP_SIZE, 0, TOTAL, 'aligned offset and size');
  fails(KEEP_SIZE | PUNCH_HOLE, PAGE - 1, PAGE, 'unaligned offset');
  fails(KEEP_SIZE, TOTAL, PAGE, 'allocating at total_size');
  fails(KEEP_SIZE, TOTAL + PAGE, PAGE, 'allocating after total_size');
  ok(KEEP_SIZE | PUNCH_HOLE, TOTAL, PAGE, 'punching at total_size');
  ok(KEEP_SIZE | PUNCH_HOLE, TOTAL + PAGE, PAGE, 'punching after total_size');
  fails(KEEP_SIZE | PUNCH_HOLE, PAGE, PAGE - 1, 'unaligned size');
  ok(KEEP_SIZE | PUNCH_HOLE, PAGE, PAGE, 'punching a page');
  ok(KEEP_SIZE, PAGE, PAGE, 'restoring the punched hole');
});

test('GM-8 an unaligned hole is EINVAL', () => {
  using f = raw.createGuestMemfd(vm, { size: TOTAL });
  for (const [offset, length] of [
    [0, 1],
    [0, PAGE - 1],
    [0, PAGE + 1],
    [1, 1],
    [1, PAGE - 1],
    [1, PAGE],
    [1, PAGE + 1],
    [PAGE, 1],
    [PAGE, PAGE - 1],
    [PAGE, PAGE + 1],
  ] as const) {
    assertErrno(() => raw.fallocate(f, KEEP_SIZE | PUNCH_HOLE, offset, length), 'EINVAL', `punch (${offset}, ${length})`);
  }
});

#!/usr/bin/env node
// private_mem_kvm_exits_test: the kernel's
// tools/testing/selftests/kvm/x86/private_mem_kvm_exits_test.c (6.12: x86_64/;
// the two versions make the same checks), check for check (CHECKS.md
// section 4): a private access KVM cannot back ends KVM_RUN with EFAULT and
// a KVM_EXIT_MEMORY_FAULT exit carrying the private flag, the page's gpa
// and 4096, whether the guest_memfd memslot was deleted under the running
// vCPU (PK-1) or never had a guest_memfd (PK-2).
//
//   node dist/selftests/private_mem_kvm_exits_test.js
import { ExitReason, Guest, Kvm, KVM_MEMORY_EXIT_FLAG_PRIVATE, MemoryAttribute, mem, type VcpuExit } from 'kvm-gmem';
import { assertEq, requires, test } from 'kvm-gmem/selftest';

const GPA = 0xc000_0000; // EXITS_TEST_GPA
const GVA = GPA; // EXITS_TEST_GVA
const SLOT = 10; // EXITS_TEST_SLOT
const PAGE = 4096;
const RUN_MS = 10_000;

// PK-S1: TEST_REQUIRE(kvm_check_cap(KVM_CAP_VM_TYPES) & BIT(KVM_X86_SW_PROTECTED_VM)).
requires('vm-type:sw-protected');
const kvm = Kvm.open();

/** A sw-protected VM whose vCPU reads GVA in a loop (guest_repeatedly_read), GVA mapped to GPA. */
function readerGuest(): { vm: ReturnType<Kvm['createVm']>; guest: Guest } {
  const vm = kvm.createVm({ type: 'sw-protected' });
  const guest = Guest.longMode(vm, {
    code: (a) => {
      a.mov('rbx', GVA);
      a.label('again').mov('rax', mem(64, 'rbx')).jmp('again');
    },
  });
  // virt_map(vm, GVA, GPA, 1): the builder's identity map already covers the low 4 GiB.
  assertEq(guest.translate(GVA), BigInt(GPA), 'GVA maps to GPA');
  return { vm, guest };
}

/**
 * PK-0 (run_vcpu_get_exit_reason): KVM_RUN either succeeds or fails with
 * EFAULT and exit_reason KVM_EXIT_MEMORY_FAULT; the exit is returned. The
 * package decodes that failure as the 'memory-fault' exit with its errno.
 */
function checkRunResult(exit: VcpuExit): VcpuExit {
  if (exit.kind === 'memory-fault') assertEq(exit.errno, 14, 'KVM_RUN failed: errno must be EFAULT');
  return exit;
}

/** PK-1/PK-2's expectation: KVM_EXIT_MEMORY_FAULT, flags PRIVATE, gpa GPA, size 4096. */
function expectPrivateFault(exit: VcpuExit): void {
  assertEq(
    exit.exitReason,
    ExitReason.MEMORY_FAULT,
    `exit reason (the exit: ${JSON.stringify(exit, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v))})`,
  );
  if (exit.kind !== 'memory-fault') return;
  assertEq(exit.flags, BigInt(KVM_MEMORY_EXIT_FLAG_PRIVATE), 'memory_fault.flags');
  assertEq(exit.gpa, BigInt(GPA), 'memory_fault.gpa');
  assertEq(exit.size, BigInt(PAGE), 'memory_fault.size');
}

test('PK-1 a private access whose guest_memfd memslot is deleted while the vCPU runs: KVM_EXIT_MEMORY_FAULT (private, gpa, 4096)', async () => {
  const { vm, guest } = readerGuest();
  using _vm = vm;
  using _guest = guest;
  // vm_userspace_mem_region_add(..., KVM_MEM_GUEST_MEMFD): the library makes a guest_memfd of the slot's size.
  const gmem = vm.createGuestMemfd({ size: PAGE });
  const slot = vm.addMemslot({ slot: SLOT, gpa: GPA, size: PAGE, guestMemfd: gmem });
  vm.setMemoryAttributes({ gpa: GPA, size: PAGE }, MemoryAttribute.PRIVATE);
  // The vCPU thread starts; the main thread deletes the slot under it (no synchronisation, as in C).
  const running = guest.vcpu.run({ timeoutMs: RUN_MS });
  slot.delete();
  expectPrivateFault(checkRunResult(await running));
});

test('PK-2 a private access to a memslot without guest_memfd: KVM_EXIT_MEMORY_FAULT (private, gpa, 4096)', () => {
  const { vm, guest } = readerGuest();
  using _vm = vm;
  using _guest = guest;
  vm.addMemslot({ slot: SLOT, gpa: GPA, size: PAGE });
  vm.setMemoryAttributes({ gpa: GPA, size: PAGE }, MemoryAttribute.PRIVATE);
  expectPrivateFault(checkRunResult(guest.vcpu.runSync({ timeoutMs: RUN_MS })));
});

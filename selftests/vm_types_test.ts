#!/usr/bin/env node
// vm_types_test: the kernel's tools/testing/selftests/kvm/vm_types_test.c
// (7.3; 6.12 has no such test), check for check (CHECKS.md section 6):
// KVM_CREATE_VM succeeds for every type KVM_CAP_VM_TYPES reports and fails
// with EINVAL for every other type 0..63.
//
//   node dist/selftests/vm_types_test.js
import { Cap, Kvm, KvmError, raw } from 'kvm-gmem';
import { assertEq, diag, requires, test } from 'kvm-gmem/selftest';

// VT-S1: TEST_REQUIRE(kvm_has_cap(KVM_CAP_VM_TYPES)).
requires('VM_TYPES');
const kvm = Kvm.open();

test('VT-1 KVM_CREATE_VM(type) for type 0..63: succeeds where KVM_CAP_VM_TYPES has the bit, else EINVAL', () => {
  const supported = BigInt(raw.checkExtension(kvm, Cap.VM_TYPES));
  diag(`Supported VM types: 0x${supported.toString(16)}`);
  for (let type = 0; type < 64; type++) {
    let got = 'success';
    try {
      raw.createVm(kvm, type).close();
    } catch (e) {
      if (!(e instanceof KvmError)) throw e;
      got = e.code;
    }
    assertEq(got, supported & (1n << BigInt(type)) ? 'success' : 'EINVAL', `KVM_CREATE_VM(${type})`);
  }
});

// The kernel's rules for the vCPU ioctls that take a guest range:
// KVM_PRE_FAULT_MEMORY (kvm_vcpu_pre_fault_memory), in the kernel's order.
// Pure. (Whether the range lies in a memslot is the kernel's answer,
// ENOENT: it depends on the memslots at the moment the vCPU faults.)
import { AlignmentError, KvmRuleError, MissingCapabilityError, RangeWrapError } from '../errors.js';
import { CapSince, errno, U64_MAX } from '../binding/uapi.js';

export interface PreFaultLimits {
  /** KVM_CAP_PRE_FAULT_MEMORY on the VM fd. */
  ioctl: boolean;
}

/** The package always sends flags 0 (the only value the kernel takes). */
export interface PreFaultRequest {
  gpa: bigint;
  size: bigint;
}

/** Judges one KVM_PRE_FAULT_MEMORY request; throws the rule the kernel would break. */
export function judgePreFault(l: PreFaultLimits, r: PreFaultRequest): void {
  if (!l.ioctl) throw new MissingCapabilityError('KVM_CAP_PRE_FAULT_MEMORY', CapSince.PRE_FAULT_MEMORY, 'KVM_PRE_FAULT_MEMORY');
  if (r.gpa & 0xfffn) throw new AlignmentError('gpa', r.gpa, 'KVM_PRE_FAULT_MEMORY');
  if (r.size & 0xfffn) throw new AlignmentError('size', r.size, 'KVM_PRE_FAULT_MEMORY');
  // The kernel's one test `gpa + size <= gpa`: an empty range, or one that wraps.
  if (r.size === 0n)
    throw new KvmRuleError(
      'pre-fault-range-empty',
      `KVM_PRE_FAULT_MEMORY at gpa 0x${r.gpa.toString(16)}: size is 0`,
      { gpa: r.gpa, size: r.size },
      errno.EINVAL,
    );
  if (r.gpa + r.size > U64_MAX) throw new RangeWrapError('gpa', r.gpa, r.size, 'KVM_PRE_FAULT_MEMORY');
}

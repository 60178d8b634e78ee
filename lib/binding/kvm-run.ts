// struct kvm_run (include/uapi/linux/kvm.h): the byte offset of every field
// this package reads or writes, by name. The exit union starts at 32 on
// x86-64. native/uapi.h pins each offset with a static_assert against the
// struct, and the addon exports them as kvmRunLayout (offsetof) so
// test/kvm-run.test.ts checks these names against the compiled ones: the
// decoder (lib/kvm/vcpu-exit.ts) uses only these names.
export const KvmRun = {
  immediateExit: 1,
  exitReason: 8,
  /** KVM_EXIT_IO */
  io: { direction: 32, size: 33, port: 34, count: 36, dataOffset: 40 },
  /** KVM_EXIT_MMIO */
  mmio: { physAddr: 32, data: 40, len: 48, isWrite: 52 },
  /** KVM_EXIT_HYPERCALL */
  hypercall: { nr: 32, args: 40, ret: 88, longmode: 96 },
  /** KVM_EXIT_FAIL_ENTRY */
  failEntry: { hardwareEntryFailureReason: 32, cpu: 40 },
  /** KVM_EXIT_INTERNAL_ERROR */
  internal: { suberror: 32, ndata: 36, data: 40 },
  /** KVM_EXIT_SYSTEM_EVENT */
  systemEvent: { type: 32, ndata: 36, data: 40 },
  /** KVM_EXIT_MEMORY_FAULT (6.8+) */
  memoryFault: { flags: 32, gpa: 40, size: 48 },
} as const;

/** Element counts of the arrays the decoder reads. */
export const KvmRunLengths = {
  mmioData: 8,
  hypercallArgs: 6,
  internalData: 16,
  systemEventData: 16,
} as const;

// kvm-gmem: typed access to KVM guest_memfd, memslots v2 and memory attributes.
// Every export is named here: what is not listed is internal, and
// test/exports.test.ts holds the list, so a change to it is deliberate.
export { Kvm, type CreateVmOptions } from './kvm/kvm.js';
export { Vm, type GuestMemfdOptions, type MemslotOptions } from './kvm/vm.js';
export { GuestMemfd, type BoundRange } from './kvm/guest-memfd.js';
export { Memslot, type MemslotBacking } from './kvm/memslot.js';
export { Mapping } from './kvm/mapping.js';
export type { ProbeAccess, ProbeResult } from './binding/probe.js';
export { ConversionError, type ConversionOptions, type ConversionRecord, type DiscardStep, type GpaRange } from './kvm/conversion.js';
export type { Capabilities } from './kvm/capabilities.js';
export type { AttributeRange } from './model/attributes.js';
export {
  KvmGmemError,
  KvmError,
  KvmRuleError,
  MissingCapabilityError,
  ClosedError,
  VcpuBusyError,
  MappingInUseError,
  KvmApiVersionError,
  AddonLoadError,
  MemslotOverlapError,
  GuestMemfdBindingOverlapError,
  AlignmentError,
  RangeWrapError,
  MemslotFlagsError,
  MemslotIdError,
  MemslotChangeError,
  UserAddressError,
  GuestMemfdRuleError,
  AttributeRuleError,
} from './errors.js';
export type { U64Input } from './args.js';
export {
  Cap,
  CapSince,
  MemFlag,
  MemoryAttribute,
  GuestMemfdFlag,
  VmType,
  PAGE_SIZE,
  Falloc,
  Mmap,
  Mempolicy,
  Memfd,
  errno,
  type CapName,
  type VmTypeName,
  type GuestMemfdFlagName,
} from './binding/uapi.js';
export * as raw from './binding/raw.js';
export { PRE_FAULT_TIMEOUT_MS, Vcpu, type RunOptions } from './kvm/vcpu.js';
export {
  ExitReason,
  InternalErrorSuberror,
  KVM_MEMORY_EXIT_FLAG_PRIVATE,
  type VcpuExit,
  type IoExit,
  type MmioExit,
  type HypercallExit,
  type MemoryFaultExit,
} from './kvm/vcpu-exit.js';
export type { Regs, Sregs, Segment, CpuidEntry, DescriptorTable } from './kvm/regs.js';
export { Assembler, AsmError, mem, offset, type AssembleResult, type Cond, type Mem, type Reg } from './x86/asm.js';
export {
  Guest,
  GuestAssertError,
  GuestExceptionError,
  GuestTimeoutError,
  UnexpectedExitError,
  KVM_HC_MAP_GPA_RANGE,
  KVM_MAP_GPA_RANGE_ENCRYPTED,
  type AddVcpuOptions,
  type GuestAssertValues,
  type GuestOptions,
  type GuestMemoryOptions,
  type RunUntilDoneOptions,
  type RunResult,
  type SyncUcall,
} from './guest/guest.js';
export { PhysPages, PhysPagesExhaustedError, type PhysAllocOptions } from './guest/phys-pages.js';
export { GuestMapError, type MapOptions, type PageSize } from './guest/page-tables.js';
export { EXCEPTION_NAMES } from './guest/idt.js';
export { GuestIo, Ucall, UCALL_PORT, UCALL_ARG_REGS, emitUcall, formatGuestPrintf, type CmpOp } from './guest/ucall.js';
export { Layout, Selector } from './guest/layout.js';

// kvm-gmem: typed access to KVM guest_memfd, memslots v2 and memory attributes.
export { Kvm, type CreateVmOptions } from './kvm.js';
export { Vm, type GuestMemfdOptions, type MemslotOptions } from './vm.js';
export { GuestMemfd, type BoundRange } from './guest-memfd.js';
export { Memslot, type MemslotBacking } from './memslot.js';
export { Mapping } from './mapping.js';
export { ConversionError, type ConversionOptions, type ConversionRecord, type DiscardStep, type GpaRange } from './conversion.js';
export type { Capabilities } from './capabilities.js';
export type { AttributeRange } from './attributes.js';
export * from './errors.js';
export {
  Cap, CapSince, MemFlag, MemoryAttribute, GuestMemfdFlag, VmType, PAGE_SIZE, type CapName, type VmTypeName, type GuestMemfdFlagName,
} from './uapi.js';
export * as raw from './raw.js';
export { Vcpu, type RunOptions } from './vcpu.js';
export { ExitReason, type VcpuExit, type IoExit, type MmioExit, type HypercallExit, type MemoryFaultExit } from './vcpu-exit.js';
export type { Regs, Sregs, Segment, CpuidEntry, DescriptorTable } from './x86/regs.js';
export { Assembler, AsmError, mem, offset, type AssembleResult, type Cond, type Mem, type Reg } from './guest/asm.js';
export {
  Guest, GuestAssertError, GuestTimeoutError, UnexpectedExitError, KVM_HC_MAP_GPA_RANGE, KVM_MAP_GPA_RANGE_ENCRYPTED,
  type GuestOptions, type GuestMemoryOptions, type RunUntilDoneOptions, type RunResult,
} from './guest/guest.js';
export { GuestIo, Ucall, UCALL_PORT, emitUcall } from './guest/ucall.js';
export { Layout, Selector } from './guest/layout.js';

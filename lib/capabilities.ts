// Decoding of the capabilities this package depends on. The same questions
// are asked of /dev/kvm and of a VM fd; the VM's answers are the ones that
// hold for that VM type (e.g. MEMORY_ATTRIBUTES is 0 on a default VM).
import { Cap, type GuestMemfdFlagName, guestMemfdFlagBits, MemoryAttribute, type VmTypeName, vmTypeNames, VmType } from './uapi.js';

export interface Capabilities {
  userMemory2: boolean;
  guestMemfd: boolean;
  memoryFaultInfo: boolean;
  /** Decoded KVM_CAP_MEMORY_ATTRIBUTES bits. */
  memoryAttributes: { private: boolean; bits: number };
  /** Decoded KVM_CAP_VM_TYPES (['default'] when the cap is absent). */
  vmTypes: VmTypeName[];
  /** Decoded KVM_CAP_GUEST_MEMFD_FLAGS (6.18+; [] before). */
  guestMemfdFlags: GuestMemfdFlagName[];
  guestMemfdFlagBits: number;
  preFaultMemory: boolean;
  nrMemslots: number;
  addressSpaces: number;
  readonlyMem: boolean;
  /** KVM_CAP_EXIT_HYPERCALL: bitmask of hypercalls that can exit to userspace. */
  exitHypercall: number;
}

export function decodeCapabilities(check: (cap: number) => number): Capabilities {
  const attrs = check(Cap.MEMORY_ATTRIBUTES);
  const types = check(Cap.VM_TYPES);
  const gmemFlags = check(Cap.GUEST_MEMFD_FLAGS);
  return {
    userMemory2: check(Cap.USER_MEMORY2) > 0,
    guestMemfd: check(Cap.GUEST_MEMFD) > 0,
    memoryFaultInfo: check(Cap.MEMORY_FAULT_INFO) > 0,
    memoryAttributes: { private: (attrs & MemoryAttribute.PRIVATE) !== 0, bits: attrs },
    vmTypes: types === 0 ? ['default'] : vmTypeNames.filter((n) => (types & (1 << VmType[n])) !== 0),
    guestMemfdFlags: (Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[]).filter((n) => (gmemFlags & guestMemfdFlagBits[n]) !== 0),
    guestMemfdFlagBits: gmemFlags,
    preFaultMemory: check(Cap.PRE_FAULT_MEMORY) > 0,
    nrMemslots: check(Cap.NR_MEMSLOTS),
    addressSpaces: Math.max(1, check(Cap.MULTI_ADDRESS_SPACE)),
    readonlyMem: check(Cap.READONLY_MEM) > 0,
    exitHypercall: check(Cap.EXIT_HYPERCALL),
  };
}

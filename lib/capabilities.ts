// Decoding of the capabilities this package depends on. The same questions
// are asked of /dev/kvm and of a VM fd; the VM's answers are the ones that
// hold for that VM type (e.g. MEMORY_ATTRIBUTES is 0 on a default VM).
import { native } from './native.js';
import { Cap, type CapName, type GuestMemfdFlagName, guestMemfdFlagBits, MemoryAttribute, type VmTypeName, vmTypeNames, VmType } from './uapi.js';

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

// Every cap decodeCapabilities() reads, asked in one crossing into the addon.
const DECODED: readonly number[] = [
  Cap.MEMORY_ATTRIBUTES, Cap.VM_TYPES, Cap.GUEST_MEMFD_FLAGS, Cap.USER_MEMORY2, Cap.GUEST_MEMFD, Cap.MEMORY_FAULT_INFO,
  Cap.PRE_FAULT_MEMORY, Cap.NR_MEMSLOTS, Cap.MULTI_ADDRESS_SPACE, Cap.READONLY_MEM, Cap.EXIT_HYPERCALL,
];

/** A cap by number or by name, as a number. */
export function capNumber(cap: number | CapName): number {
  return typeof cap === 'number' ? cap : Cap[cap];
}

/** KVM_CHECK_EXTENSION for each cap on `fd`, in one call into the addon. */
// Request and answer buffers, reused: a fresh typed array per call costs an
// off-heap allocation (and Node-API moves on-heap ones off the heap), which
// was more than the ioctls. The call is synchronous, so one pair suffices.
let reqBuf = new Int32Array(32);
let outBuf = new Int32Array(32);

export function checkExtensions(fd: number, caps: readonly (number | CapName)[]): number[] {
  if (caps.length > reqBuf.length) {
    reqBuf = new Int32Array(caps.length);
    outBuf = new Int32Array(caps.length);
  }
  const req = caps.length === reqBuf.length ? reqBuf : reqBuf.subarray(0, caps.length);
  for (let i = 0; i < caps.length; i++) {
    const n = capNumber(caps[i] as number | CapName);
    if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw new TypeError(`checkExtensions: cap ${String(caps[i])} is not an integer 0..2^31-1`);
    req[i] = n;
  }
  native.checkExtensions(fd, req, outBuf);
  const answers = new Array<number>(caps.length);
  for (let i = 0; i < caps.length; i++) answers[i] = outBuf[i] as number;
  return answers;
}

/** Reads and decodes the caps this package depends on from `fd` (/dev/kvm or a VM). */
export function readCapabilities(fd: number): Capabilities {
  const answers = checkExtensions(fd, DECODED);
  return decodeCapabilities((cap) => answers[DECODED.indexOf(cap)] as number);
}

function decodeCapabilities(check: (cap: number) => number): Capabilities {
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

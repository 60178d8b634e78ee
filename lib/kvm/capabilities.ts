// Decoding of the capabilities this package depends on. The same questions
// are asked of /dev/kvm and of a VM fd; the VM's answers are the ones that
// hold for that VM type (e.g. MEMORY_ATTRIBUTES is 0 on a default VM).
import { FdResource } from '../binding/resource.js';
import { argError, typeCode } from '../args.js';
import { native } from '../binding/native.js';
import { Cap, type CapName, type GuestMemfdFlagName, guestMemfdFlagBits, MemoryAttribute, type VmTypeName, vmTypeNames, VmType } from '../binding/uapi.js';

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
  Cap.MEMORY_ATTRIBUTES,
  Cap.VM_TYPES,
  Cap.GUEST_MEMFD_FLAGS,
  Cap.USER_MEMORY2,
  Cap.GUEST_MEMFD,
  Cap.MEMORY_FAULT_INFO,
  Cap.PRE_FAULT_MEMORY,
  Cap.NR_MEMSLOTS,
  Cap.MULTI_ADDRESS_SPACE,
  Cap.READONLY_MEM,
  Cap.EXIT_HYPERCALL,
];

/** A cap by number or by name, as a number. */
export function capNumber(cap: number | CapName): number {
  if (typeof cap === 'number') return cap;
  // Only a string is looked up: any other key would be converted by calling
  // the caller's toString(), after the fd may already have been taken.
  const n = typeof cap === 'string' && Object.hasOwn(Cap, cap) ? Cap[cap] : undefined;
  if (n === undefined)
    throw argError(
      `unknown capability ${typeof cap === 'string' ? `'${cap}'` : typeof cap} (a number, or a name such as 'GUEST_MEMFD')`,
      typeCode(cap, 'number', 'string'),
    );
  return n;
}

/** KVM_CHECK_EXTENSION for each cap on `fd`, in one call into the addon. */
// Request and answer buffers, reused: a fresh typed array per call costs an
// off-heap allocation (and Node-API moves on-heap ones off the heap), which
// was more than the ioctls. The call is synchronous, so one pair suffices.
let reqBuf = new Int32Array(32);
let outBuf = new Int32Array(32);

export function checkExtensions(fd: () => number, caps: readonly (number | CapName)[]): number[] {
  if (!Array.isArray(caps)) throw argError('checkExtensions: caps must be an array', 'ERR_INVALID_ARG_TYPE');
  // Every cap is read (and a getter or Proxy trap run) before the fd is
  // taken and before the shared buffers are touched: a re-entrant call from
  // such a getter then finds the buffers free, and a getter that closes the
  // object leaves no fd to misdirect.
  const nums = Array.from(caps, (c) => {
    const n = capNumber(c as number | CapName);
    if (!Number.isInteger(n) || n < 0 || n > 0x7fffffff) throw argError(`checkExtensions: cap ${String(n)} is not an integer 0..2^31-1`);
    return n;
  });
  const f = fd();
  if (nums.length > reqBuf.length) {
    reqBuf = new Int32Array(nums.length);
    outBuf = new Int32Array(nums.length);
  }
  const req = nums.length === reqBuf.length ? reqBuf : reqBuf.subarray(0, nums.length);
  for (let i = 0; i < nums.length; i++) req[i] = nums[i] as number;
  native.checkExtensions(f, req, outBuf);
  const answers = new Array<number>(nums.length);
  for (let i = 0; i < nums.length; i++) answers[i] = outBuf[i] as number;
  return answers;
}

/** Reads and decodes the caps this package depends on from `fd` (/dev/kvm or a VM). */
export function readCapabilities(fd: number): Capabilities {
  const answers = checkExtensions(() => fd, DECODED);
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

/**
 * An fd that answers KVM_CHECK_EXTENSION: /dev/kvm (Kvm) and a VM fd (Vm),
 * whose answers differ. The binding for one fd is made once.
 */
export abstract class CheckExtensionFd extends FdResource {
  #caps: Capabilities | undefined;
  // KVM_CHECK_EXTENSION with the fd bound in: one call into the addon per check.
  #check: ((cap: number) => number) | undefined;

  /** KVM_CHECK_EXTENSION on this fd. */
  checkExtension(cap: number | CapName): number {
    const n = capNumber(cap);
    const fd = this.use('check an extension');
    return (this.#check ??= native.checkExtensionBind(fd))(n);
  }

  /** KVM_CHECK_EXTENSION on this fd for each cap, in one call into the addon. */
  checkExtensions(caps: readonly (number | CapName)[]): number[] {
    return checkExtensions(() => this.use('check extensions'), caps);
  }

  /** The capabilities this fd answers, asked once. */
  capabilities(): Capabilities {
    this.use('read capabilities');
    this.#caps ??= readCapabilities(this.fd);
    return this.#caps;
  }
}

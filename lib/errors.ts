// Error classes. KvmError is what the kernel said; every other class is a
// rule this package checks before calling the kernel, so the user learns
// which of the kernel's many EINVAL causes applies, with the values.
import { getSystemErrorMap } from 'node:util';
import { errno as E } from './binding/uapi.js';

const errnoMap = getSystemErrorMap();

// errnos this package can report that libuv's table does not name: ETIME
// (preFaultMemory()'s deadline), EHWPOISON (a memory-fault exit's KVM_RUN).
const extraErrnos = new Map<number, [string, string]>([
  [62, ['ETIME', 'timer expired']],
  [133, ['EHWPOISON', 'memory page has hardware error']],
]);

export function errnoName(errno: number): string {
  return (errnoMap.get(-errno) ?? extraErrnos.get(errno))?.[0] ?? `E${errno}`;
}

function errnoText(errno: number): string {
  return (errnoMap.get(-errno) ?? extraErrnos.get(errno))?.[1] ?? 'unknown error';
}

export function hex(v: number | bigint): string {
  return '0x' + v.toString(16);
}

function formatFields(fields: Record<string, unknown>): string {
  return Object.entries(fields)
    .map(
      ([k, v]) =>
        `${k}=${typeof v === 'bigint' || (typeof v === 'number' && k !== 'slot' && k !== 'asId' && k !== 'guest_memfd') ? hex(v as number | bigint) : String(v)}`,
    )
    .join(' ');
}

/**
 * The base of every error class this package throws, so `instanceof
 * KvmGmemError` tells the package's errors from others. `code` is stable
 * and never empty: an errno name ('EINVAL') for KvmError, 'ERR_KVM_*' for
 * the rest. (Bad arguments are TypeError or RangeError, as in Node, with
 * Node's codes: ERR_INVALID_ARG_TYPE, ERR_INVALID_ARG_VALUE, ERR_OUT_OF_RANGE.)
 */
export abstract class KvmGmemError extends Error {
  abstract readonly code: string;
}

/**
 * A syscall failed. Shaped like Node's SystemError: `code` ('EINVAL'),
 * `errno` (positive), `syscall` ('ioctl(KVM_SET_USER_MEMORY_REGION2)').
 * `request` holds every field that was sent; `explanations` lists the kernel
 * rules that can produce this errno when the package's own checks passed.
 */
export class KvmError extends KvmGmemError {
  override name = 'KvmError';
  readonly code: string;
  readonly errno: number;
  readonly syscall: string;
  request: Readonly<Record<string, unknown>> | undefined;
  explanations: readonly string[] = [];

  constructor(errno: number, syscall: string) {
    super(`${syscall} failed: ${errnoName(errno)} (${errnoText(errno)})`);
    this.errno = errno;
    this.code = errnoName(errno);
    this.syscall = syscall;
  }

  /** Attaches the request fields (and explanations) and rewrites the message to show them. */
  withRequest(request: Record<string, unknown>, explanations: readonly string[] = []): this {
    this.request = request;
    this.explanations = explanations;
    let msg = `${this.syscall} failed: ${this.code} (${errnoText(this.errno)}); sent ${formatFields(request)}`;
    if (explanations.length > 0) msg += `\nkernel rules that can give ${this.code} here:\n  - ${explanations.join('\n  - ')}`;
    this.message = msg;
    return this;
  }
}

/**
 * Runs one syscall and, if it fails with a KvmError, attaches the request
 * that was sent (and, chosen by errno, the kernel rules that can explain it).
 */
export function withRequest<T>(request: Record<string, unknown>, f: () => T, explain: (errno: number) => readonly string[] = () => []): T {
  try {
    return f();
  } catch (e) {
    throw e instanceof KvmError ? e.withRequest(request, explain(e.errno)) : e;
  }
}

/**
 * Repeats `f` while it fails with EINTR. For calls the kernel abandons when
 * any signal is pending and that are safe to repeat: KVM_CREATE_VM
 * (mmu_notifier_register -> mm_take_all_locks) and guest_memfd fallocate
 * (kvm_gmem_allocate, which keeps what it allocated). In Node a child
 * process exiting (SIGCHLD) is enough to hit them.
 */
export function retryOnEintr<T>(f: () => T): T {
  for (;;) {
    try {
      return f();
    } catch (e) {
      if (!isEintr(e)) throw e;
    }
  }
}

/** Whether `e` is the kernel's EINTR (a call a pending signal cut short). */
export function isEintr(e: unknown): boolean {
  return e instanceof KvmError && e.code === 'EINTR';
}

/**
 * A rule checked before the kernel was called. `rule` is a stable id,
 * `details` the values involved, `kernelErrno` what the kernel would have
 * answered for the same request (so tests can compare verdicts).
 */
export class KvmRuleError extends KvmGmemError {
  override name = 'KvmRuleError';
  readonly code = 'ERR_KVM_RULE';
  constructor(
    readonly rule: string,
    message: string,
    readonly details: Readonly<Record<string, unknown>>,
    readonly kernelErrno: number,
  ) {
    super(`[${rule}] ${message}`);
  }
}

export interface SlotRef {
  slot: number;
  asId: number;
}

export interface GfnRange {
  start: number; // first gfn
  end: number; // one past the last gfn
}

export function fmtGfns(r: GfnRange): string {
  return `gfn [${hex(r.start)}, ${hex(r.end)})`;
}

export function fmtPages(r: GfnRange): string {
  return `bytes [${hex(BigInt(r.start) * 4096n)}, ${hex(BigInt(r.end) * 4096n)})`;
}

/** The 1:1 rule, gfn side: a gfn belongs to at most one memslot per address space. */
export class MemslotOverlapError extends KvmRuleError {
  override name = 'MemslotOverlapError';
  constructor(
    readonly slot: SlotRef,
    readonly gfns: GfnRange,
    readonly existing: SlotRef,
    readonly existingGfns: GfnRange,
  ) {
    super(
      'memslot-gfn-overlap',
      `memslot ${slot.slot} (address space ${slot.asId}) at ${fmtGfns(gfns)} overlaps memslot ${existing.slot} at ${fmtGfns(existingGfns)}`,
      { slot, gfns, existing, existingGfns },
      E.EEXIST,
    );
  }
}

/** The 1:1 rule, file side: a guest_memfd page is bound to at most one gfn. */
export class GuestMemfdBindingOverlapError extends KvmRuleError {
  override name = 'GuestMemfdBindingOverlapError';
  constructor(
    readonly slot: SlotRef,
    readonly gfns: GfnRange,
    readonly filePages: GfnRange,
    readonly existing: SlotRef,
    readonly existingGfns: GfnRange,
    readonly existingFilePages: GfnRange,
    kernelErrno: number,
  ) {
    super(
      'guest-memfd-binding-overlap',
      `memslot ${slot.slot} (address space ${slot.asId}, ${fmtGfns(gfns)}) would bind guest_memfd ${fmtPages(filePages)}, ` +
        `which overlaps ${fmtPages(existingFilePages)} already bound to memslot ${existing.slot} (address space ${existing.asId}, ${fmtGfns(existingGfns)})`,
      { slot, gfns, filePages, existing, existingGfns, existingFilePages },
      kernelErrno,
    );
  }
}

/** A kernel feature this host or VM type does not offer. */
export class MissingCapabilityError extends KvmGmemError {
  override name = 'MissingCapabilityError';
  readonly code = 'ERR_KVM_MISSING_CAPABILITY';
  constructor(
    readonly capability: string,
    readonly since: string,
    readonly what: string,
  ) {
    super(`${what} needs ${capability} (Linux ${since}+), which this ${capability.startsWith('KVM_CAP') ? 'VM' : 'kernel'} does not offer`);
  }
}

/** An operation on an object after close(). */
export class ClosedError extends KvmGmemError {
  override name = 'ClosedError';
  readonly code = 'ERR_KVM_CLOSED';
  constructor(
    readonly object: string,
    readonly operation: string,
  ) {
    super(`${object} is closed: cannot ${operation}`);
  }
}

/**
 * A vCPU call while run() is in flight on the vCPU's own thread. KVM holds
 * vcpu->mutex for the whole KVM_RUN, so any other vCPU ioctl would block
 * the calling thread until the guest exits (a deadlock when the deadline or
 * kick() needs that thread). kick() first, and call again after run() settled.
 */
export class VcpuBusyError extends KvmGmemError {
  override name = 'VcpuBusyError';
  readonly code = 'ERR_KVM_VCPU_BUSY';
  constructor(
    readonly vcpu: number,
    readonly operation: string,
  ) {
    super(`vCPU ${vcpu} is running (run() in flight): cannot ${operation}; kick() it and wait for run() to settle`);
  }
}

/**
 * Mapping.unmap() of memory that memslots still use as their userspace
 * backing: the kernel would keep that address, and the next mapping placed
 * there (any memory of this process) would become guest memory.
 */
export class MappingInUseError extends KvmGmemError {
  override name = 'MappingInUseError';
  readonly code = 'ERR_KVM_MAPPING_IN_USE';
  /** `memslots`: the users (memslots, or a reservation's fixed mappings when `kind` is 'unmap'). */
  constructor(
    readonly address: bigint,
    readonly memslots: readonly string[],
    kind: 'delete' | 'unmap' = 'delete',
  ) {
    super(
      kind === 'delete'
        ? `the mapping at ${hex(address)} backs ${memslots.join(', ')}: delete ${memslots.length === 1 ? 'that memslot' : 'those memslots'} before unmapping it`
        : `the reservation at ${hex(address)} holds ${memslots.join(', ')}: unmap ${memslots.length === 1 ? 'it' : 'them'} before the reservation`,
    );
  }
}

/** The KVM device answers KVM_GET_API_VERSION with a version other than 12 (Kvm.open()). */
export class KvmApiVersionError extends KvmGmemError {
  override name = 'KvmApiVersionError';
  readonly code = 'ERR_KVM_API_VERSION';
  constructor(
    readonly path: string,
    readonly apiVersion: number,
    readonly expected: number,
  ) {
    super(`${path}: KVM_GET_API_VERSION is ${apiVersion}, expected ${expected}`);
  }
}

/** The package cannot load its native addon (no package root above the module, for one). */
export class AddonLoadError extends KvmGmemError {
  override name = 'AddonLoadError';
  readonly code = 'ERR_KVM_ADDON_LOAD';
}

/** An address, size or offset that must be a multiple of the page size. */
export class AlignmentError extends KvmRuleError {
  override name = 'AlignmentError';
  constructor(
    readonly field: string,
    readonly value: bigint,
    context: string,
  ) {
    super('page-alignment', `${context}: ${field} ${hex(value)} is not a multiple of the page size (0x1000)`, { field, value }, E.EINVAL);
  }
}

/** start + size passes 2^64 (or the limit named). */
export class RangeWrapError extends KvmRuleError {
  override name = 'RangeWrapError';
  constructor(
    readonly field: string,
    readonly start: bigint,
    readonly size: bigint,
    context: string,
  ) {
    super('range-wraps', `${context}: ${field} ${hex(start)} + size ${hex(size)} wraps past 2^64`, { field, start, size }, E.EINVAL);
  }
}

/** Memslot flags the kernel refuses for this VM, or in this combination. */
export class MemslotFlagsError extends KvmRuleError {
  override name = 'MemslotFlagsError';
  constructor(
    readonly flags: number,
    reason: string,
  ) {
    super('memslot-flags', `memslot flags ${hex(flags)}: ${reason}`, { flags }, E.EINVAL);
  }
}

/** A slot id or address space outside what the VM has. */
export class MemslotIdError extends KvmRuleError {
  override name = 'MemslotIdError';
  constructor(rule: 'slot-id-out-of-range' | 'address-space-out-of-range', message: string, details: Record<string, unknown>) {
    super(rule, message, details, E.EINVAL);
  }
}

/** A change the kernel refuses for an existing memslot (or a missing one). */
export class MemslotChangeError extends KvmRuleError {
  override name = 'MemslotChangeError';
  constructor(
    rule: 'guest-memfd-memslot-immutable' | 'memslot-modify' | 'memslot-not-found' | 'memslot-in-use' | 'memslot-table-full' | 'memslot-size-zero',
    message: string,
    details: Record<string, unknown>,
    kernelErrno: number = E.EINVAL,
  ) {
    super(rule, message, details, kernelErrno);
  }
}

/** A user address range the kernel refuses (beyond the user address space). */
export class UserAddressError extends KvmRuleError {
  override name = 'UserAddressError';
  constructor(rule: 'userspace-address-range' | 'memslot-too-large', message: string, details: Record<string, unknown>) {
    super(rule, message, details, E.EINVAL);
  }
}

/** A guest_memfd that cannot be created, bound or used as asked. */
export class GuestMemfdRuleError extends KvmRuleError {
  override name = 'GuestMemfdRuleError';
  constructor(
    rule:
      | 'guest-memfd-bad-fd'
      | 'not-a-guest-memfd'
      | 'guest-memfd-of-another-vm'
      | 'guest-memfd-range'
      | 'guest-memfd-flags'
      | 'guest-memfd-size'
      | 'guest-memfd-not-mappable'
      | 'guest-memfd-memslots-unsupported'
      | 'fallocate-mode',
    message: string,
    details: Record<string, unknown>,
    kernelErrno: number = E.EINVAL,
  ) {
    super(rule, message, details, kernelErrno);
  }
}

/** A memory-attribute request the kernel refuses. */
export class AttributeRuleError extends KvmRuleError {
  override name = 'AttributeRuleError';
  constructor(rule: 'memory-attributes-unsupported' | 'attribute-range-empty' | 'attribute-flags', message: string, details: Record<string, unknown>) {
    super(rule, message, details, E.EINVAL);
  }
}

// The kernel's rules for KVM_SET_USER_MEMORY_REGION2, checked in the order
// kvm_main.c checks them (kvm_vm_ioctl_set_memory_region ->
// kvm_set_memory_region -> kvm_gmem_bind -> kvm_arch_prepare_memory_region),
// so the first rule broken here is the one the kernel would have hit and
// kernelErrno matches its answer. judge() never changes the table; apply()
// does, once the kernel has accepted. Vm.addMemslot() asks for a create:
// its own refusals (an id in use, size 0) come where the kernel would turn
// the request into a change or a delete instead, after every kernel rule
// that comes first.
import {
  AlignmentError,
  GuestMemfdBindingOverlapError,
  GuestMemfdRuleError,
  hex,
  KvmRuleError,
  MemslotChangeError,
  MemslotFlagsError,
  MemslotIdError,
  MemslotOverlapError,
  RangeWrapError,
  UserAddressError,
} from '../errors.js';
import { type GuestMemfdInfo, type MemslotTable, type SlotEntry } from '../model/memslot-table.js';
import type { Interval, IntervalMap } from '../model/interval-map.js';
import { CapSince, errno, KVM_MEM_MAX_NR_PAGES, MEM_FLAGS_KNOWN, MemFlag, PAGE_SHIFT, U64_MAX } from '../binding/uapi.js';

/** What the VM allows, read from its capabilities once. */
export interface MemslotLimits {
  /** Identity of this VM (GuestMemfdInfo.vmId of its own files). */
  vmId: number;
  /** KVM_CAP_USER_MEMORY2: whether KVM_SET_USER_MEMORY_REGION2 exists; without it the VM sends v1, whose rules are the same without guest_memfd. */
  userMemory2: boolean;
  /** KVM_CAP_NR_MEMSLOTS: user slot ids are 0..nrMemslots-1. */
  nrMemslots: number;
  /** KVM_CAP_MULTI_ADDRESS_SPACE on the VM (at least 1). */
  addressSpaces: number;
  /** Whether this VM accepts KVM_MEM_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD on the VM fd). */
  guestMemfd: boolean;
  /** KVM_CAP_READONLY_MEM on the VM fd. */
  readonlyMem: boolean;
  /** End of the user address space (TASK_SIZE_MAX). */
  taskSizeMax: bigint;
  /** errno for a file range already bound: EINVAL up to 6.18, EEXIST from 7.2 (lib/kvm/kernel-behaviour.ts). Read only when that rule is broken. */
  bindingOverlapErrno: number;
}

/** The guest_memfd field as the kernel will resolve it. */
export type GuestMemfdTarget = { kind: 'guest-memfd'; info: GuestMemfdInfo } | { kind: 'not-guest-memfd'; fd: number } | { kind: 'bad-fd'; fd: number };

export interface RegionRequest {
  /** Raw slot field: address space << 16 | slot id. */
  slot: number;
  flags: number;
  gpa: bigint;
  size: bigint;
  userspaceAddr: bigint;
  guestMemfdOffset: bigint;
  /** Only consulted when flags has KVM_MEM_GUEST_MEMFD. */
  guestMemfd: GuestMemfdTarget | null;
  /** The caller asked for a new memslot (Vm.addMemslot): a change or a delete is refused. */
  create?: boolean;
}

export type Change =
  | { kind: 'create'; entry: SlotEntry }
  | { kind: 'delete'; old: SlotEntry }
  | { kind: 'move'; old: SlotEntry; baseGfn: number; flags: number }
  | { kind: 'flags'; old: SlotEntry; flags: number }
  | { kind: 'none'; old: SlotEntry };

const PAGE_MASK = 0xfffn;

function slotName(asId: number, id: number): string {
  return `memslot ${id} (address space ${asId})`;
}

function checkFlags(l: MemslotLimits, flags: number): void {
  if ((flags & ~MEM_FLAGS_KNOWN) !== 0) throw new MemslotFlagsError(flags, `unknown bits ${hex((flags & ~MEM_FLAGS_KNOWN) >>> 0)}`);
  const gmem = (flags & MemFlag.GUEST_MEMFD) !== 0;
  if (gmem && !l.userMemory2) {
    // v1 has no guest_memfd fields; its flag check refuses bit 2 (EINVAL).
    throw new MemslotFlagsError(
      flags,
      `KVM_MEM_GUEST_MEMFD needs KVM_SET_USER_MEMORY_REGION2 (KVM_CAP_USER_MEMORY2, Linux ${CapSince.USER_MEMORY2}+), which this kernel does not offer`,
    );
  }
  if (gmem && !l.guestMemfd) {
    throw new MemslotFlagsError(
      flags,
      'KVM_MEM_GUEST_MEMFD is not accepted by this VM (KVM_CAP_GUEST_MEMFD is 0 on the VM fd; before 6.18 only private-memory VM types take it)',
    );
  }
  if (gmem && flags & MemFlag.LOG_DIRTY_PAGES)
    throw new MemslotFlagsError(flags, 'KVM_MEM_LOG_DIRTY_PAGES cannot be combined with KVM_MEM_GUEST_MEMFD (no dirty logging of private memory)');
  if (flags & MemFlag.READONLY) {
    if (gmem) throw new MemslotFlagsError(flags, 'KVM_MEM_READONLY cannot be combined with KVM_MEM_GUEST_MEMFD');
    if (!l.readonlyMem) throw new MemslotFlagsError(flags, 'KVM_MEM_READONLY is not supported by this VM (KVM_CAP_READONLY_MEM is 0)');
  }
}

// Below 2^53 every field is exact as a number, and sums of two stay below
// 2^54: far from 2^64 and, past 2^53, beyond every limit they are compared
// with. So real requests are checked without allocating a bigint (the
// bookkeeping cost at 32,764 memslots, docs/BENCHMARKS.md); anything else,
// or any failure, takes the exact bigint path below, which names the rule.
const SAFE = 1n << 53n;
const SAFE_N = 2 ** 53;

function passesGeneral(l: MemslotLimits, r: RegionRequest, asId: number): boolean {
  // Number() rounds monotonically and 2^53 is exact, so a field is below
  // 2^53 exactly when its Number() is: one conversion per field, no bigint
  // comparison.
  const size = Number(r.size);
  const gpa = Number(r.gpa);
  const ua = Number(r.userspaceAddr);
  const off = Number(r.guestMemfdOffset);
  if (size >= SAFE_N || gpa >= SAFE_N || ua >= SAFE_N || off >= SAFE_N) return false;
  return (
    size % 4096 === 0 &&
    gpa % 4096 === 0 &&
    ua % 4096 === 0 &&
    ua + size <= Number(l.taskSizeMax) &&
    (!(r.flags & MemFlag.GUEST_MEMFD) || off % 4096 === 0) &&
    asId < l.addressSpaces &&
    size / 4096 <= KVM_MEM_MAX_NR_PAGES
  );
}

function checkGeneral(l: MemslotLimits, r: RegionRequest, asId: number, id: number): void {
  if (passesGeneral(l, r, asId)) return;
  const ctx = slotName(asId, id);
  if (r.size & PAGE_MASK) throw new AlignmentError('memory_size', r.size, ctx);
  if (r.gpa & PAGE_MASK) throw new AlignmentError('guest_phys_addr', r.gpa, ctx);
  if (r.userspaceAddr & PAGE_MASK) throw new AlignmentError('userspace_addr', r.userspaceAddr, ctx);
  const uend = r.userspaceAddr + r.size;
  if (uend > U64_MAX || uend > l.taskSizeMax) {
    throw new UserAddressError(
      'userspace-address-range',
      `${ctx}: userspace_addr ${hex(r.userspaceAddr)} + size ${hex(r.size)} ends beyond the user address space (${hex(l.taskSizeMax)})`,
      { userspaceAddr: r.userspaceAddr, size: r.size, limit: l.taskSizeMax },
    );
  }
  if (r.flags & MemFlag.GUEST_MEMFD) {
    if (r.guestMemfdOffset & PAGE_MASK) throw new AlignmentError('guest_memfd_offset', r.guestMemfdOffset, ctx);
    if (r.guestMemfdOffset + r.size > U64_MAX) throw new RangeWrapError('guest_memfd_offset', r.guestMemfdOffset, r.size, ctx);
  }
  if (asId >= l.addressSpaces) {
    throw new MemslotIdError(
      'address-space-out-of-range',
      `${ctx}: address space ${asId} does not exist; this VM has ${l.addressSpaces} (KVM_CAP_MULTI_ADDRESS_SPACE)`,
      { asId, addressSpaces: l.addressSpaces },
    );
  }
  if (r.gpa + r.size > U64_MAX) throw new RangeWrapError('guest_phys_addr', r.gpa, r.size, ctx);
  if (r.size >> BigInt(PAGE_SHIFT) > BigInt(KVM_MEM_MAX_NR_PAGES)) {
    throw new UserAddressError('memslot-too-large', `${ctx}: size ${hex(r.size)} exceeds KVM_MEM_MAX_NR_PAGES (2^31 - 1 pages)`, { size: r.size });
  }
}

function checkModify(r: RegionRequest, old: SlotEntry, npages: number, baseGfn: number): Change {
  const ctx = slotName(old.asId, old.id);
  if (r.flags & MemFlag.GUEST_MEMFD || old.gmem !== null || old.flags & MemFlag.GUEST_MEMFD) {
    throw new MemslotChangeError(
      'guest-memfd-memslot-immutable',
      `${ctx} is a guest_memfd memslot (or would become one): it cannot be moved or changed, only deleted`,
      { slot: old.id, asId: old.asId },
    );
  }
  if (r.userspaceAddr !== old.userspaceAddr || npages !== old.npages || (r.flags ^ old.flags) & MemFlag.READONLY) {
    throw new MemslotChangeError(
      'memslot-modify',
      `${ctx} exists: a change may move it or toggle dirty logging, but not change its size (${old.npages} -> ${npages} pages), ` +
        `userspace_addr (${hex(old.userspaceAddr)} -> ${hex(r.userspaceAddr)}) or KVM_MEM_READONLY`,
      { slot: old.id, asId: old.asId },
    );
  }
  if (baseGfn !== old.baseGfn) return { kind: 'move', old, baseGfn, flags: r.flags };
  if (r.flags !== old.flags) return { kind: 'flags', old, flags: r.flags };
  return { kind: 'none', old };
}

function checkBinding(l: MemslotLimits, r: RegionRequest, asId: number, id: number, baseGfn: number, npages: number): GuestMemfdInfo {
  const t = r.guestMemfd;
  const ctx = t !== null && t.kind === 'guest-memfd' && t.info.vmId === l.vmId ? '' : slotName(asId, id);
  if (t === null || t.kind === 'bad-fd') {
    throw new GuestMemfdRuleError('guest-memfd-bad-fd', `${ctx}: guest_memfd ${t?.fd ?? '(none)'} is not an open file descriptor`, { fd: t?.fd }, errno.EBADF);
  }
  if (t.kind === 'not-guest-memfd') throw new GuestMemfdRuleError('not-a-guest-memfd', `${ctx}: fd ${t.fd} is not a guest_memfd`, { fd: t.fd });
  const g = t.info;
  if (g.vmId !== l.vmId) throw new GuestMemfdRuleError('guest-memfd-of-another-vm', `${ctx}: ${g.label} belongs to another VM`, { guestMemfd: g.label });
  const pgoff = Number(r.guestMemfdOffset) / 4096;
  const beyondEof =
    r.guestMemfdOffset < SAFE && r.size < SAFE && Number.isSafeInteger(g.size)
      ? Number(r.guestMemfdOffset) + Number(r.size) > g.size
      : r.guestMemfdOffset + r.size > BigInt(g.size);
  if (r.guestMemfdOffset >= 1n << 63n || beyondEof) {
    throw new GuestMemfdRuleError(
      'guest-memfd-range',
      `${slotName(asId, id)}: guest_memfd_offset ${hex(r.guestMemfdOffset)} + size ${hex(r.size)} ends beyond the end of ${g.label} (size ${hex(g.size)})`,
      { offset: r.guestMemfdOffset, size: r.size, fileSize: g.size },
    );
  }
  const hit = g.bindings.firstOverlap(pgoff, pgoff + npages);
  if (hit !== undefined) {
    const o = hit.value;
    throw new GuestMemfdBindingOverlapError(
      { slot: id, asId },
      { start: baseGfn, end: baseGfn + npages },
      { start: pgoff, end: pgoff + npages },
      { slot: o.id, asId: o.asId },
      { start: o.baseGfn, end: o.baseGfn + o.npages },
      { start: hit.start, end: hit.end },
      l.bindingOverlapErrno,
    );
  }
  return g;
}

/**
 * Judges one KVM_SET_USER_MEMORY_REGION2 request against the table: returns
 * the change the kernel would make, or throws the rule it would break.
 */
export function judge(l: MemslotLimits, table: MemslotTable, r: RegionRequest): Change {
  const asId = r.slot >>> 16;
  const id = r.slot & 0xffff;
  if (id >= l.nrMemslots) {
    throw new MemslotIdError('slot-id-out-of-range', `memslot id ${id} is out of range: this VM has ids 0..${l.nrMemslots - 1} (KVM_CAP_NR_MEMSLOTS)`, {
      id,
      nrMemslots: l.nrMemslots,
    });
  }
  checkFlags(l, r.flags);
  checkGeneral(l, r, asId, id);
  const old = table.get(asId, id);
  if (r.create === true && (old !== undefined || r.size === 0n)) throw refusedCreate(l, table, r, old, asId, id);
  if (r.size === 0n) {
    if (old === undefined)
      throw new MemslotChangeError('memslot-not-found', `${slotName(asId, id)} does not exist, so it cannot be deleted`, { slot: id, asId });
    return { kind: 'delete', old };
  }
  // Page aligned and below 2^64: at most 52 significant bits, exact as numbers.
  const baseGfn = Number(r.gpa) / 4096;
  const npages = Number(r.size) / 4096;
  let change: Change;
  if (old !== undefined) {
    change = checkModify(r, old, npages, baseGfn);
    if (change.kind !== 'move') return change;
  }
  // Like kvm_check_memslot_overlap(): any overlapping slot but this id's own
  // (a move may overlap its old place and still collide with a neighbour).
  const hit = overlapOtherThan(table.gfnIndex(asId), baseGfn, baseGfn + npages, id);
  if (hit !== undefined) {
    throw new MemslotOverlapError(
      { slot: id, asId },
      { start: baseGfn, end: baseGfn + npages },
      { slot: hit.value.id, asId },
      { start: hit.start, end: hit.end },
    );
  }
  if (old !== undefined) return { kind: 'move', old, baseGfn, flags: r.flags };
  const gmem = r.flags & MemFlag.GUEST_MEMFD ? checkBinding(l, r, asId, id, baseGfn, npages) : null;
  const entry: SlotEntry = {
    asId,
    id,
    flags: r.flags,
    baseGfn,
    npages,
    userspaceAddr: r.userspaceAddr,
    gmem,
    gmemPgoff: gmem === null ? 0 : Number(r.guestMemfdOffset) / 4096,
  };
  return { kind: 'create', entry };
}

// A create that the kernel would take as a delete (size 0) or as a change of
// the slot that holds the id. kernelErrno is what the kernel would answer
// to the same request: 0 where it would do that other thing.
function refusedCreate(l: MemslotLimits, table: MemslotTable, r: RegionRequest, old: SlotEntry | undefined, asId: number, id: number): MemslotChangeError {
  const name = slotName(asId, id);
  if (r.size === 0n) {
    return new MemslotChangeError(
      'memslot-size-zero',
      `${name}: size 0 means delete in the kernel; use Memslot.delete()`,
      { slot: id, asId },
      old === undefined ? errno.EINVAL : 0,
    );
  }
  let kernelErrno = 0;
  try {
    judge(l, table, { ...r, create: false });
  } catch (e) {
    if (!(e instanceof KvmRuleError)) throw e;
    kernelErrno = e.kernelErrno;
  }
  return new MemslotChangeError('memslot-in-use', `${name} already exists; delete it first, or use move()/setDirtyLogging()`, { slot: id, asId }, kernelErrno);
}

/**
 * The kernel's slot field (address space << 16 | id) for a create. Values
 * the field cannot hold are out of range by the same rules judge() names.
 */
export function slotField(l: MemslotLimits, asId: number, id: number): number {
  if (id > 0xffff) {
    throw new MemslotIdError('slot-id-out-of-range', `memslot id ${id} is out of range: this VM has ids 0..${l.nrMemslots - 1} (KVM_CAP_NR_MEMSLOTS)`, {
      id,
      nrMemslots: l.nrMemslots,
    });
  }
  if (asId > 0xffff) {
    throw new MemslotIdError(
      'address-space-out-of-range',
      `${slotName(asId, id)}: address space ${asId} does not exist; this VM has ${l.addressSpaces} (KVM_CAP_MULTI_ADDRESS_SPACE)`,
      { asId, addressSpaces: l.addressSpaces },
    );
  }
  return asId * 65536 + id;
}

/** The lowest free slot id of an address space, for a create that names none. */
export function freeSlotId(l: MemslotLimits, table: MemslotTable, asId: number): number {
  const id = table.freeId(asId, l.nrMemslots);
  if (id < 0) throw new MemslotChangeError('memslot-table-full', `all ${l.nrMemslots} memslot ids of address space ${asId} are in use`, { asId });
  return id;
}

// The first memslot overlapping [start, end) other than `id` itself (a move
// may overlap its own old place). Slots are disjoint, so after skipping the
// own one, only the next one up can still overlap.
function overlapOtherThan(index: IntervalMap<SlotEntry>, start: number, end: number, id: number): Interval<SlotEntry> | undefined {
  const hit = index.firstOverlap(start, end);
  if (hit === undefined || hit.value.id !== id) return hit;
  const next = index.higher(hit.start);
  return next !== undefined && next.start < end ? next : undefined;
}

/** Records a change the kernel accepted. */
export function apply(table: MemslotTable, c: Change): void {
  switch (c.kind) {
    case 'create':
      table.add(c.entry);
      break;
    case 'delete':
      table.remove(c.old);
      break;
    case 'move':
      table.modify(c.old, c.baseGfn, c.flags);
      break;
    case 'flags':
      table.modify(c.old, c.old.baseGfn, c.flags);
      break;
    case 'none':
      break;
  }
}

/** Kernel rules this package cannot check, listed when the kernel still says EINVAL. */
export const unexplainedMemslotEinval = [
  'the gpa range ends beyond the largest gfn this host maps (kvm_mmu_max_gfn: the host MAXPHYADDR under TDP, 52 bits under shadow paging)',
  'the guest_memfd was closed, or the fd number now names a different file, between the check and the ioctl',
  'a memslot move while an external page tracker (KVMGT) is attached',
  'an arch-specific refusal (TDX aliases, protected-state VMs refusing KVM_MEM_READONLY)',
];

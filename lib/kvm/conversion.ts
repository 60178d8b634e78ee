// Converting guest memory between shared and private.
//
// Order of steps, chosen so a failure leaves a state the record describes:
//   1. KVM_SET_MEMORY_ATTRIBUTES for the whole range. The kernel reserves
//      its xarray entries before changing anything, so this step either
//      happens completely or not at all; the shadow map follows it.
//   2. Only if asked (discard), drop the copy that just became stale, one
//      memslot at a time: to private, the shared backing pages
//      (MADV_REMOVE, or a punched hole in a caller's fd); to shared, the
//      guest_memfd pages (PUNCH_HOLE), so the guest reads zeros next, as
//      the kernel's private_mem_conversions_test does.
// If step 2 fails part-way, ConversionError.record lists the attribute
// change and every discard that did happen; the failed one is in `cause`.
import { KvmError, KvmGmemError } from '../errors.js';
import type { Memslot } from './memslot.js';
import { argError, isSafeUint, toU64, typeCode, type U64Input } from '../args.js';
import { MemoryAttribute } from '../binding/uapi.js';

export interface GpaRange {
  gpa: U64Input;
  size: U64Input;
}

export interface ConversionOptions {
  /** Drop the now-stale copy (default false). */
  discard?: boolean;
}

export interface DiscardStep {
  slot: number;
  addressSpace: number;
  /** Which copy was dropped. */
  what: 'guest_memfd' | 'shared-backing';
  /** gpa range dropped. */
  gpa: number;
  size: number;
  /** Why nothing was dropped for this memslot, if nothing was. */
  skipped?: string;
}

export interface ConversionRecord {
  gpa: number;
  size: number;
  to: 'private' | 'shared';
  /** The attributes now set on the range. */
  attributes: number;
  discarded: DiscardStep[];
}

export class ConversionError extends KvmGmemError {
  override name = 'ConversionError';
  readonly code = 'ERR_KVM_CONVERSION_PARTIAL';
  constructor(
    readonly record: ConversionRecord,
    override readonly cause: unknown,
  ) {
    super(
      `conversion of [0x${record.gpa.toString(16)}, +0x${record.size.toString(16)}) to ${record.to}: attributes were set, ` +
        `${record.discarded.length} discard step(s) done, then a discard failed: ${(cause as Error).message}`,
    );
  }
}

/** What convert() needs from the VM. */
export interface ConversionHost {
  setMemoryAttributes(range: GpaRange, attributes: number): void;
  memslotsIn(startGfn: number, endGfn: number): Memslot[];
}

export function convert(vm: ConversionHost, range: GpaRange, to: 'private' | 'shared', options: ConversionOptions): ConversionRecord {
  if (to !== 'private' && to !== 'shared') throw argError(`convert: 'to' must be 'private' or 'shared', got ${String(to)}`, typeCode(to, 'string'));
  // Numbers go through as given (the VM's number fast path); anything else
  // is validated here first, so a bad type is reported as convert's.
  if (!isSafeUint(range.gpa)) toU64(range.gpa, 'convert: gpa');
  if (!isSafeUint(range.size)) toU64(range.size, 'convert: size');
  const attributes = to === 'private' ? MemoryAttribute.PRIVATE : 0;
  vm.setMemoryAttributes(range, attributes);
  const gpa = Number(range.gpa);
  const size = Number(range.size);
  const record: ConversionRecord = { gpa, size, to, attributes, discarded: [] };
  if (!options.discard) return record;
  for (const m of vm.memslotsIn(gpa / 4096, (gpa + size) / 4096)) {
    const start = Math.max(gpa, m.gpa);
    const end = Math.min(gpa + size, m.gpa + m.size);
    try {
      record.discarded.push(to === 'shared' ? discardPrivate(m, start, end) : discardShared(m, start, end));
    } catch (e) {
      throw new ConversionError(record, e);
    }
  }
  return record;
}

// To shared: the private copy lives in the guest_memfd.
function discardPrivate(m: Memslot, start: number, end: number): DiscardStep {
  const step: DiscardStep = { slot: m.slot, addressSpace: m.addressSpace, what: 'guest_memfd', gpa: start, size: end - start };
  const g = m.guestMemfd;
  if (g === null) return { ...step, skipped: 'memslot has no guest_memfd' };
  if (g.closed) return { ...step, skipped: 'its guest_memfd is closed' };
  g.punchHole(m.guestMemfdOffset + (start - m.gpa), end - start);
  return step;
}

// To private: the shared copy lives in the memslot's userspace memory.
function discardShared(m: Memslot, start: number, end: number): DiscardStep {
  const step: DiscardStep = { slot: m.slot, addressSpace: m.addressSpace, what: 'shared-backing', gpa: start, size: end - start };
  if (m.backing === 'guest-memfd') return { ...step, skipped: 'the shared backing is the guest_memfd itself' };
  const b = m.sharedBacking();
  if (b === null) return { ...step, skipped: 'memslot has no shared backing' };
  try {
    b.mapping.discard(b.offset + (start - m.gpa), end - start);
  } catch (e) {
    // The request is built only on failure: this is on every discarding conversion's path.
    throw e instanceof KvmError ? e.withRequest({ slot: m.slot, gpa: start, size: end - start, advice: 'MADV_REMOVE' }) : e;
  }
  return step;
}

// A memslot: a gpa range of one address space, backed for shared accesses by
// userspace memory (userspace_addr) and, with KVM_MEM_GUEST_MEMFD, for
// private accesses by a guest_memfd range. Created by Vm.addMemslot(); the
// Vm keeps the table, this object is the handle.
import { ClosedError } from '../errors.js';
import type { GuestMemfd } from './guest-memfd.js';
import { type Mapping, releaseMapping, retainMapping } from './mapping.js';
import type { SlotEntry } from '../model/memslot-table.js';
import { MemFlag } from '../binding/uapi.js';
import { rangeError, toU64, type U64Input } from '../args.js';

/** Where the memslot's userspace_addr points. */
export type MemslotBacking =
  /** Anonymous shared memory owned by the memslot (the default). */
  | { kind: 'anonymous' }
  /** A MAP_SHARED mapping of a caller-owned fd (e.g. a memfd) at `offset`. */
  | { kind: 'fd'; fd: number; offset?: number }
  /** The guest_memfd's own mapping (6.18, MMAP|INIT_SHARED): shared and private are one file. */
  | { kind: 'guest-memfd' }
  /** userspace_addr = 0: no shared backing (private-only memslots). */
  | { kind: 'none' };

/** The operations a Memslot asks of its VM (an object the VM keeps private). */
export interface MemslotOwner {
  delete(m: Memslot): void;
  move(m: Memslot, gpa: U64Input): void;
  setFlags(m: Memslot, flags: number): void;
}

/** The table entry behind a Memslot: for the VM that holds it, not for users. */
export let memslotEntry: (m: Memslot) => SlotEntry;

/** Makes a Memslot: only Vm.addMemslot() does (the constructor is private). */
export let newMemslot: (
  owner: MemslotOwner,
  entry: SlotEntry,
  guestMemfd: GuestMemfd | null,
  backing: MemslotBacking['kind'],
  mapping: Mapping | null,
  mappingOffset: number,
  ownsMapping: boolean,
) => Memslot;

export class Memslot {
  #deleted = false;
  readonly #owner: MemslotOwner;
  readonly #entry: SlotEntry;
  readonly #mapping: Mapping | null;
  readonly #mappingOffset: number;
  readonly #ownsMapping: boolean;
  readonly guestMemfd: GuestMemfd | null;
  readonly backing: MemslotBacking['kind'];

  static {
    memslotEntry = (m) => m.#entry;
    newMemslot = (...args) => new Memslot(...args);
  }

  /** Use Vm.addMemslot(). */
  private constructor(
    owner: MemslotOwner,
    entry: SlotEntry,
    guestMemfd: GuestMemfd | null,
    backing: MemslotBacking['kind'],
    mapping: Mapping | null,
    mappingOffset: number,
    ownsMapping: boolean,
  ) {
    this.#owner = owner;
    this.#entry = entry;
    this.guestMemfd = guestMemfd;
    this.backing = backing;
    this.#mapping = mapping;
    this.#mappingOffset = mappingOffset;
    this.#ownsMapping = ownsMapping;
    // A mapping it does not own (the guest_memfd's) stays mapped while this
    // memslot holds its address.
    if (mapping !== null && !ownsMapping) retainMapping(mapping, this.#name());
  }

  #name(): string {
    return `memslot ${this.#entry.id} (address space ${this.#entry.asId})`;
  }

  get slot(): number {
    return this.#entry.id;
  }
  get addressSpace(): number {
    return this.#entry.asId;
  }
  get gpa(): number {
    return this.#entry.baseGfn * 4096;
  }
  get size(): number {
    return this.#entry.npages * 4096;
  }
  get flags(): number {
    return this.#entry.flags;
  }
  get userspaceAddr(): bigint {
    return this.#entry.userspaceAddr;
  }
  get guestMemfdOffset(): number {
    return this.#entry.gmemPgoff * 4096;
  }
  get readonly(): boolean {
    return (this.#entry.flags & MemFlag.READONLY) !== 0;
  }
  get dirtyLogging(): boolean {
    return (this.#entry.flags & MemFlag.LOG_DIRTY_PAGES) !== 0;
  }
  get deleted(): boolean {
    return this.#deleted;
  }

  /** Whether `gpa` lies in this memslot (any U64Input, so `contains(exit.gpa)` works). */
  contains(gpa: U64Input): boolean {
    if (typeof gpa === 'number' && Number.isSafeInteger(gpa) && gpa >= 0 && this.gpa + this.size <= Number.MAX_SAFE_INTEGER) {
      return gpa >= this.gpa && gpa < this.gpa + this.size;
    }
    // Exact in gfns: a gpa past 2^53 is not exact as a number.
    const gfn = toU64(gpa, 'contains: gpa') >> 12n;
    const start = BigInt(this.#entry.baseGfn);
    return gfn >= start && gfn < start + BigInt(this.#entry.npages);
  }

  /**
   * A view of the shared backing at [gpa, gpa + length) (defaults: the whole
   * slot). It detaches (byteLength 0) when the memslot is deleted, or, for
   * backing 'guest-memfd', when the guest_memfd (which owns that mapping) is
   * closed. A deleted memslot gives no new view (ClosedError).
   */
  view(gpa: U64Input = this.gpa, length?: number): Uint8Array {
    if (this.#deleted) throw new ClosedError('Memslot', 'create a view');
    if (this.#mapping === null) throw rangeError(`memslot ${this.slot} has no shared backing (backing 'none')`);
    const g = typeof gpa === 'number' ? gpa : Number(toU64(gpa, 'view: gpa'));
    const len = length ?? this.gpa + this.size - g;
    if (!Number.isSafeInteger(g) || !Number.isSafeInteger(len) || g < this.gpa || len < 0 || g + len > this.gpa + this.size) {
      throw rangeError(
        `gpa range [0x${g.toString(16)}, +0x${len.toString(16)}) is outside memslot ${this.slot} [0x${this.gpa.toString(16)}, +0x${this.size.toString(16)})`,
      );
    }
    return this.#mapping.bytes(this.#mappingOffset + (g - this.gpa), len);
  }

  /** @internal The shared backing's mapping and this slot's offset in it. */
  sharedBacking(): { mapping: Mapping; offset: number } | null {
    return this.#mapping === null ? null : { mapping: this.#mapping, offset: this.#mappingOffset };
  }

  /** KVM_MR_DELETE: removes the memslot from the VM and frees its own backing. */
  delete(): void {
    if (this.#deleted) return;
    this.#owner.delete(this);
  }

  /** KVM_MR_MOVE to a new gpa (not for guest_memfd memslots: they are immutable). */
  move(gpa: U64Input): void {
    this.#owner.move(this, gpa);
  }

  /** KVM_MR_FLAGS_ONLY: turns dirty logging on or off. */
  setDirtyLogging(on: boolean): void {
    this.#owner.setFlags(this, on ? this.flags | MemFlag.LOG_DIRTY_PAGES : this.flags & ~MemFlag.LOG_DIRTY_PAGES);
  }

  /** @internal Called by the VM once the kernel dropped the slot (or the VM closed). */
  released(): void {
    this.#deleted = true;
    if (this.#mapping === null) return;
    if (this.#ownsMapping) this.#mapping.unmap();
    else releaseMapping(this.#mapping, this.#name());
  }
}

// A memslot: a gpa range of one address space, backed for shared accesses by
// userspace memory (userspace_addr) and, with KVM_MEM_GUEST_MEMFD, for
// private accesses by a guest_memfd range. Created by Vm.addMemslot(); the
// Vm keeps the table, this object is the handle.
import { ClosedError } from './errors.js';
import type { GuestMemfd } from './guest-memfd.js';
import type { Mapping } from './mapping.js';
import type { SlotEntry } from './memslot-table.js';
import { MemFlag } from './uapi.js';

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

/** The operations a Memslot asks of its VM. */
export interface MemslotOwner {
  deleteMemslot(m: Memslot): void;
  moveMemslot(m: Memslot, gpa: number | bigint): void;
  setMemslotFlags(m: Memslot, flags: number): void;
}

export class Memslot {
  #deleted = false;

  /** @internal Use Vm.addMemslot(). */
  constructor(
    private readonly owner: MemslotOwner,
    /** @internal */ readonly entry: SlotEntry,
    readonly guestMemfd: GuestMemfd | null,
    readonly backing: MemslotBacking['kind'],
    private readonly mapping: Mapping | null,
    private readonly mappingOffset: number,
    private readonly ownsMapping: boolean,
  ) {}

  get slot(): number { return this.entry.id; }
  get addressSpace(): number { return this.entry.asId; }
  get gpa(): number { return this.entry.baseGfn * 4096; }
  get size(): number { return this.entry.npages * 4096; }
  get flags(): number { return this.entry.flags; }
  get userspaceAddr(): bigint { return this.entry.userspaceAddr; }
  get guestMemfdOffset(): number { return this.entry.gmemPgoff * 4096; }
  get readonly(): boolean { return (this.entry.flags & MemFlag.READONLY) !== 0; }
  get dirtyLogging(): boolean { return (this.entry.flags & MemFlag.LOG_DIRTY_PAGES) !== 0; }
  get deleted(): boolean { return this.#deleted; }

  /** Whether `gpa` lies in this memslot. */
  contains(gpa: number): boolean {
    return gpa >= this.gpa && gpa < this.gpa + this.size;
  }

  /**
   * A view of the shared backing at [gpa, gpa + length) (defaults: the whole
   * slot). It detaches (byteLength 0) when the memslot is deleted, or, for
   * backing 'guest-memfd', when the guest_memfd (which owns that mapping) is
   * closed. A deleted memslot gives no new view (ClosedError).
   */
  view(gpa = this.gpa, length = this.gpa + this.size - gpa): Uint8Array {
    if (this.#deleted) throw new ClosedError('Memslot', 'create a view');
    if (this.mapping === null) throw new RangeError(`memslot ${this.slot} has no shared backing (backing 'none')`);
    if (gpa < this.gpa || length < 0 || gpa + length > this.gpa + this.size) {
      throw new RangeError(`gpa range [0x${gpa.toString(16)}, +0x${length.toString(16)}) is outside memslot ${this.slot} [0x${this.gpa.toString(16)}, +0x${this.size.toString(16)})`);
    }
    return this.mapping.bytes(this.mappingOffset + (gpa - this.gpa), length);
  }

  /** @internal The shared backing's mapping and this slot's offset in it. */
  sharedBacking(): { mapping: Mapping; offset: number } | null {
    return this.mapping === null ? null : { mapping: this.mapping, offset: this.mappingOffset };
  }

  /** KVM_MR_DELETE: removes the memslot from the VM and frees its own backing. */
  delete(): void {
    if (this.#deleted) return;
    this.owner.deleteMemslot(this);
  }

  /** KVM_MR_MOVE to a new gpa (not for guest_memfd memslots: they are immutable). */
  move(gpa: number | bigint): void {
    this.owner.moveMemslot(this, gpa);
  }

  /** KVM_MR_FLAGS_ONLY: turns dirty logging on or off. */
  setDirtyLogging(on: boolean): void {
    this.owner.setMemslotFlags(this, on ? this.flags | MemFlag.LOG_DIRTY_PAGES : this.flags & ~MemFlag.LOG_DIRTY_PAGES);
  }

  /** @internal Called by the VM once the kernel dropped the slot (or the VM closed). */
  released(): void {
    this.#deleted = true;
    if (this.ownsMapping) this.mapping?.unmap();
  }
}

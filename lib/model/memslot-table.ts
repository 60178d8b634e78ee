// The package's copy of the VM's memslot table, and of which guest_memfd
// pages each memslot binds. The kernel has no read-back ioctl for either, so
// this is updated only after the kernel accepted a change. Both indexes are
// interval maps, so checking the 1:1 rule costs O(log n) per operation.
import { IntervalMap } from './interval-map.js';

/** What the rules need to know about a guest_memfd (see GuestMemfd). */
export interface GuestMemfdInfo {
  /** Identity of the VM that created it. */
  readonly vmId: number;
  /** File size in bytes. */
  readonly size: number;
  /** The file's pages bound to memslots, by page offset. */
  readonly bindings: IntervalMap<SlotEntry>;
  readonly label: string;
}

/** One memslot as the kernel holds it. Page numbers are exact as numbers. */
export interface SlotEntry {
  readonly asId: number;
  readonly id: number;
  flags: number;
  baseGfn: number;
  readonly npages: number;
  /** Set once, when the memslot's backing is mapped. */
  userspaceAddr: bigint;
  readonly gmem: GuestMemfdInfo | null;
  /** First file page bound (guest_memfd_offset / 4096). */
  readonly gmemPgoff: number;
}

export class MemslotTable {
  private readonly byGfn = new Map<number, IntervalMap<SlotEntry>>();
  // Per address space, indexed by slot id (ids are below 2^15): a plain
  // array lookup on every request's path rather than a hash.
  private readonly byId: (SlotEntry | undefined)[][] = [];
  private count = 0;
  // No id below the hint is free, per address space: keeps freeId()
  // amortized O(1) when filling the table slot after slot.
  private readonly freeHint = new Map<number, number>();

  get size(): number {
    return this.count;
  }

  get(asId: number, id: number): SlotEntry | undefined {
    return this.byId[asId]?.[id];
  }

  gfnIndex(asId: number): IntervalMap<SlotEntry> {
    let m = this.byGfn.get(asId);
    if (m === undefined) {
      m = new IntervalMap<SlotEntry>();
      this.byGfn.set(asId, m);
    }
    return m;
  }

  /** The memslot holding `gfn` in address space `asId`. */
  find(asId: number, gfn: number): SlotEntry | undefined {
    const f = this.byGfn.get(asId)?.floor(gfn);
    return f !== undefined && f.end > gfn ? f.value : undefined;
  }

  add(e: SlotEntry): void {
    (this.byId[e.asId] ??= [])[e.id] = e;
    this.count++;
    this.gfnIndex(e.asId).insert(e.baseGfn, e.baseGfn + e.npages, e);
    // A binding outlives nothing: if the file was already closed the kernel
    // dropped its bindings, and so do we (GuestMemfd clears them on close).
    e.gmem?.bindings.insert(e.gmemPgoff, e.gmemPgoff + e.npages, e);
  }

  remove(e: SlotEntry): void {
    const ids = this.byId[e.asId];
    if (ids?.[e.id] === e) {
      ids[e.id] = undefined;
      this.count--;
    }
    if (e.id < (this.freeHint.get(e.asId) ?? 0)) this.freeHint.set(e.asId, e.id);
    this.gfnIndex(e.asId).delete(e.baseGfn);
    e.gmem?.bindings.delete(e.gmemPgoff);
  }

  /** KVM_MR_MOVE / KVM_MR_FLAGS_ONLY on a memslot without guest_memfd. */
  modify(e: SlotEntry, baseGfn: number, flags: number): void {
    const idx = this.gfnIndex(e.asId);
    idx.delete(e.baseGfn);
    e.baseGfn = baseGfn;
    e.flags = flags;
    idx.insert(e.baseGfn, e.baseGfn + e.npages, e);
  }

  /** Every memslot, ordered by address space then gfn. */
  entries(): SlotEntry[] {
    return [...this.byGfn.keys()]
      .sort((a, b) => a - b)
      .flatMap((as) =>
        this.gfnIndex(as)
          .entries()
          .map((i) => i.value),
      );
  }

  /** The lowest slot id not in use in `asId`, or -1. */
  freeId(asId: number, limit: number): number {
    for (let id = this.freeHint.get(asId) ?? 0; id < limit; id++) {
      if (this.get(asId, id) === undefined) {
        this.freeHint.set(asId, id);
        return id;
      }
    }
    return -1;
  }
}

// The guest-physical page allocator of a VM, as the kernel selftests'
// vm_phy_pages_alloc(): which pages of which memslot are taken, so the
// builders' page tables, stacks and IDT and the user's own allocations never
// land on each other. One allocator per VM (every Guest on a VM shares it);
// pages are recorded per memslot as page offsets, so a moved memslot keeps
// its record. Like the selftests, it never frees: a test allocates what it
// needs and drops the VM.
import { rangeError, toU64, type U64Input } from '../args.js';
import { KvmGmemError } from '../errors.js';
import type { Memslot } from '../kvm/memslot.js';
import type { Vm } from '../kvm/vm.js';

const PAGE = 4096;

export interface PhysAllocOptions {
  /** The memslot to take pages from (default: the one holding gpa 0). */
  memslot?: Memslot;
  /** The lowest gpa the pages may start at (as vm_phy_pages_alloc's paddr_min). */
  minGpa?: U64Input;
  /** Alignment of the first page in bytes, a power of two >= 4096 (default 4096). */
  align?: number;
}

/** No run of free pages of the size asked for in the memslot. */
export class PhysPagesExhaustedError extends KvmGmemError {
  override name = 'PhysPagesExhaustedError';
  readonly code = 'ERR_KVM_GUEST_PHYS_EXHAUSTED';
  constructor(
    readonly pages: number,
    readonly slot: number,
  ) {
    super(`no ${pages} free contiguous guest page(s) in memslot ${slot}`);
  }
}

/** Taken page ranges of one memslot: sorted, disjoint [start, end) page offsets. */
type Taken = [number, number][];

export class PhysPages {
  readonly #vm: Vm;
  readonly #taken = new WeakMap<Memslot, Taken>();

  /** @internal One per VM: physPages(vm). */
  constructor(vm: Vm) {
    this.#vm = vm;
  }

  /**
   * Takes `count` contiguous free pages and returns the gpa of the first.
   * Only memslots with shared backing are offered by default, since the
   * builders write their tables through it.
   */
  alloc(count: number, options: PhysAllocOptions = {}): number {
    const { memslot: m, minGpa, align } = { ...options };
    if (!Number.isSafeInteger(count) || count < 1) throw rangeError(`alloc: page count must be a positive integer, got ${String(count)}`);
    const alignBytes = align ?? PAGE;
    if (!Number.isSafeInteger(alignBytes) || alignBytes < PAGE || (alignBytes & (alignBytes - 1)) !== 0) {
      throw rangeError(`alloc: align must be a power of two >= 4096, got ${String(alignBytes)}`);
    }
    const min = minGpa === undefined ? 0n : toU64(minGpa, 'alloc: minGpa');
    const slot = m ?? this.#vm.memslotAt(0);
    if (slot === undefined) throw rangeError('alloc: the VM has no memslot at gpa 0; pass one as options.memslot');
    if (slot.deleted) throw rangeError(`alloc: memslot ${slot.slot} is deleted`);
    const base = slot.gpa;
    const pages = slot.size / PAGE;
    const alignPages = alignBytes / PAGE;
    const minPage = min <= BigInt(base) ? 0 : Number((min - BigInt(base) + BigInt(PAGE - 1)) / BigInt(PAGE));
    const taken = this.#takenOf(slot);
    // First fit over the gaps, each start rounded up to the alignment in gpa terms.
    let at = minPage;
    for (let i = 0; i <= taken.length; i++) {
      const gapEnd = i < taken.length ? taken[i]![0] : pages;
      const start = alignUp(base / PAGE + Math.max(at, 0), alignPages) - base / PAGE;
      if (start + count <= gapEnd && start + count <= pages) {
        this.#mark(taken, start, start + count);
        return base + start * PAGE;
      }
      if (i < taken.length) at = Math.max(at, taken[i]![1]);
    }
    throw new PhysPagesExhaustedError(count, slot.slot);
  }

  /**
   * Marks [gpa, gpa + size) taken (the builders' fixed layout, or memory a
   * test places by hand). Pages already taken stay taken.
   */
  reserve(memslot: Memslot, gpa: number, size: number): void {
    const first = Math.floor((gpa - memslot.gpa) / PAGE);
    const last = Math.ceil((gpa + size - memslot.gpa) / PAGE);
    if (first < 0 || last * PAGE > memslot.size || last <= first) {
      throw rangeError(`reserve: [0x${gpa.toString(16)}, +0x${size.toString(16)}) is not inside memslot ${memslot.slot}`);
    }
    this.#mark(this.#takenOf(memslot), first, last);
  }

  /** Whether the page holding `gpa` is taken (false outside every memslot). */
  isTaken(gpa: number): boolean {
    const m = this.#vm.memslotAt(gpa);
    if (m === undefined) return false;
    const p = Math.floor((gpa - m.gpa) / PAGE);
    return this.#takenOf(m).some(([s, e]) => p >= s && p < e);
  }

  /** The taken ranges of a memslot, as gpa ranges. */
  taken(memslot: Memslot): { gpa: number; size: number }[] {
    return this.#takenOf(memslot).map(([s, e]) => ({ gpa: memslot.gpa + s * PAGE, size: (e - s) * PAGE }));
  }

  #takenOf(m: Memslot): Taken {
    let t = this.#taken.get(m);
    if (t === undefined) this.#taken.set(m, (t = []));
    return t;
  }

  // Inserts [s, e), merging with neighbours, keeping the list sorted and disjoint.
  #mark(t: Taken, s: number, e: number): void {
    const out: Taken = [];
    let placed = false;
    for (const [a, b] of t) {
      if (b < s) out.push([a, b]);
      else if (a > e) {
        if (!placed) out.push([s, e]);
        placed = true;
        out.push([a, b]);
      } else {
        s = Math.min(s, a);
        e = Math.max(e, b);
      }
    }
    if (!placed) out.push([s, e]);
    t.splice(0, t.length, ...out);
  }
}

function alignUp(v: number, a: number): number {
  return Math.ceil(v / a) * a;
}

const allocators = new WeakMap<Vm, PhysPages>();

/** The VM's page allocator (created on first use). */
export function physPages(vm: Vm): PhysPages {
  let p = allocators.get(vm);
  if (p === undefined) allocators.set(vm, (p = new PhysPages(vm)));
  return p;
}

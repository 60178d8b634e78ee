// The 64-bit guests' 4-level page tables, as the kernel selftests'
// virt_map()/addr_gva2gpa(): the builder's identity map of the first 4 GiB
// (2 MiB pages) is extended, page by page, to any canonical gva with 4 KiB
// or 2 MiB pages; new table pages come from the VM's page allocator, so they
// never land on the guest's own data. Tables are read and written through
// the memslots' shared backing, so they must live in memory that has one.
import { rangeError, toU64, type U64Input } from '../args.js';
import { hex, KvmGmemError } from '../errors.js';
import type { Vm } from '../kvm/vm.js';
import type { PhysPages } from './phys-pages.js';

const P = 1n;
const RW = 2n;
const PS = 0x80n;
const ADDR = 0x000f_ffff_ffff_f000n;
const KIB4 = 0x1000n;
const MIB2 = 0x20_0000n;

export type PageSize = 4096 | 0x200000;

/** A gva is already mapped (map() without `replace`), or a table points outside guest memory. */
export class GuestMapError extends KvmGmemError {
  override name = 'GuestMapError';
  constructor(
    readonly code: 'ERR_KVM_GUEST_GVA_MAPPED' | 'ERR_KVM_GUEST_PAGE_TABLE',
    message: string,
    readonly gva: bigint,
  ) {
    super(message);
  }
}

export interface MapOptions {
  /** 4096 (default) or 0x200000. */
  pageSize?: PageSize;
  /**
   * Replace mappings that exist (default false: a present page is a
   * GuestMapError, as virt_pg_map asserts). A 2 MiB page that a 4 KiB
   * mapping falls in is split into 4 KiB pages that keep its mapping.
   */
  replace?: boolean;
}

function canonical(gva: bigint): boolean {
  const top = gva >> 47n;
  return top === 0n || top === 0x1ffffn;
}

export class PageTables {
  constructor(
    readonly vm: Vm,
    readonly pml4: number,
    readonly phys: PhysPages,
  ) {}

  /**
   * Maps [gva, gva + size) to [gpa, gpa + size) with pages of `pageSize`.
   * The guest must not be running on the vCPUs that use these tables, or
   * must flush its TLB (invlpg, or a CR3 write) before it relies on a
   * replaced entry.
   */
  map(gvaIn: U64Input, gpaIn: U64Input, sizeIn: U64Input, options: MapOptions = {}): void {
    const { pageSize: ps = 4096, replace = false } = { ...options };
    const gva = toU64(gvaIn, 'map: gva');
    const gpa = toU64(gpaIn, 'map: gpa');
    const size = toU64(sizeIn, 'map: size');
    if (ps !== 4096 && ps !== 0x200000) throw rangeError(`map: pageSize must be 4096 or 0x200000, got ${String(ps)}`);
    const page = BigInt(ps);
    if (gva % page || gpa % page || size % page || size === 0n) {
      throw rangeError(`map: gva ${hex(gva)}, gpa ${hex(gpa)} and size ${hex(size)} must be non-zero multiples of the page size ${hex(page)}`);
    }
    if (!canonical(gva) || !canonical(gva + size - 1n) || gva >> 47n !== (gva + size - 1n) >> 47n) {
      throw rangeError(`map: [${hex(gva)}, +${hex(size)}) is not a canonical 48-bit virtual range`);
    }
    if (gpa + size > 1n << 52n) throw rangeError(`map: [${hex(gpa)}, +${hex(size)}) is past the 52-bit physical address space`);
    // Refuse before writing anything, so a refused map leaves the tables as they were.
    if (!replace) {
      for (let off = 0n; off < size; off += page) {
        if (this.#leafPresent(gva + off, ps))
          throw new GuestMapError('ERR_KVM_GUEST_GVA_MAPPED', `map: gva ${hex(gva + off)} is already mapped (pass replace: true)`, gva + off);
      }
    }
    for (let off = 0n; off < size; off += page) this.#mapOne(gva + off, gpa + off, ps);
  }

  /** The gpa `gva` maps to, or null where it is not mapped (addr_gva2gpa). */
  translate(gvaIn: U64Input): bigint | null {
    const gva = toU64(gvaIn, 'translate: gva');
    if (!canonical(gva)) return null;
    let table = BigInt(this.pml4);
    for (const [shift, hugeOk] of [
      [39n, false],
      [30n, true],
      [21n, true],
      [12n, false],
    ] as const) {
      const e = this.#read(table + ((gva >> shift) & 511n) * 8n, gva);
      if ((e & P) === 0n) return null;
      if (shift === 12n || (hugeOk && e & PS)) {
        const mask = (1n << shift) - 1n;
        return (e & ADDR & ~mask) | (gva & mask);
      }
      table = e & ADDR;
    }
    return null;
  }

  #leafPresent(gva: bigint, ps: PageSize): boolean {
    let table = BigInt(this.pml4);
    for (const shift of [39n, 30n, 21n, 12n]) {
      const e = this.#read(table + ((gva >> shift) & 511n) * 8n, gva);
      if ((e & P) === 0n) return false;
      // A huge page covers the gva whatever size is asked for; at the 2 MiB
      // level a table of 4 KiB pages counts as present too.
      if (e & PS && shift !== 39n) return true;
      if ((ps === 0x200000 && shift === 21n) || shift === 12n) return true;
      table = e & ADDR;
    }
    return false;
  }

  #mapOne(gva: bigint, gpa: bigint, ps: PageSize): void {
    let table = BigInt(this.pml4);
    const leafShift = ps === 4096 ? 12n : 21n;
    for (const shift of [39n, 30n, 21n]) {
      if (shift === leafShift) break;
      const at = table + ((gva >> shift) & 511n) * 8n;
      const e = this.#read(at, gva);
      if ((e & P) === 0n) {
        table = this.#newTable();
        this.#write(at, table | P | RW, gva);
      } else if (e & PS) {
        table = this.#split(e, shift, gva);
        this.#write(at, table | P | RW, gva);
      } else table = e & ADDR;
    }
    this.#write(table + ((gva >> leafShift) & 511n) * 8n, gpa | P | RW | (ps === 4096 ? 0n : PS), gva);
  }

  // A table of the next level down that maps what the huge entry `e` did.
  #split(e: bigint, shift: bigint, gva: bigint): bigint {
    if (shift !== 21n) throw new GuestMapError('ERR_KVM_GUEST_PAGE_TABLE', `map: a 1 GiB page covers gva ${hex(gva)}; splitting one is not supported`, gva);
    const t = this.#newTable();
    const base = e & ADDR & ~(MIB2 - 1n);
    for (let i = 0n; i < 512n; i++) this.#write(t + i * 8n, (base + i * KIB4) | (e & (P | RW | 4n)), gva);
    return t;
  }

  #newTable(): bigint {
    const gpa = this.phys.alloc(1);
    this.#bytes(BigInt(gpa), 4096, 0n).fill(0);
    return BigInt(gpa);
  }

  #bytes(gpa: bigint, len: number, gva: bigint): Uint8Array {
    const m = this.vm.memslotAt(gpa);
    if (m === undefined || m.sharedBacking() === null) {
      throw new GuestMapError(
        'ERR_KVM_GUEST_PAGE_TABLE',
        `page table at gpa ${hex(gpa)} (walking gva ${hex(gva)}) is not in a memslot with shared backing`,
        gva,
      );
    }
    return m.view(gpa, len);
  }

  #read(gpa: bigint, gva: bigint): bigint {
    const b = this.#bytes(gpa, 8, gva);
    return new DataView(b.buffer, b.byteOffset, 8).getBigUint64(0, true);
  }

  #write(gpa: bigint, v: bigint, gva: bigint): void {
    const b = this.#bytes(gpa, 8, gva);
    new DataView(b.buffer, b.byteOffset, 8).setBigUint64(0, v, true);
  }
}

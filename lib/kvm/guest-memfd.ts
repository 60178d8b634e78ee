// A guest_memfd file (KVM_CREATE_GUEST_MEMFD): guest memory that userspace
// cannot read or write, bound to memslots by file range. fallocate allocates
// (KEEP_SIZE) or discards (PUNCH_HOLE|KEEP_SIZE) pages; with the MMAP flag
// (6.18+) the file can be mapped, and with INIT_SHARED its pages start shared
// so the mapping is usable.
import { GuestMemfdRuleError, isEintr, KvmError } from '../errors.js';
import { disownMapping, Mapping } from './mapping.js';
import type { GuestMemfdInfo, SlotEntry } from '../model/memslot-table.js';
import { native } from '../binding/native.js';
import { FdResource } from '../binding/resource.js';
import { toU64, type U64Input } from '../args.js';
import { IntervalMap } from '../model/interval-map.js';
import { errno, Falloc, type GuestMemfdFlagName, GuestMemfdFlag, guestMemfdFlagBits } from '../binding/uapi.js';
import { fallocateOp, judgeFallocate, passesFallocate } from '../rules/guest-memfd.js';

export interface BoundRange {
  slot: number;
  addressSpace: number;
  /** Byte offset in the file. */
  offset: number;
  size: number;
  gpa: number;
}

let nextGmem = 1;

/**
 * What the memslot rules and table know of a guest_memfd: a record of the
 * package's own, so no caller can change what the 1:1 rule reads.
 */
export let guestMemfdInfo: (g: GuestMemfd) => GuestMemfdInfo;

export class GuestMemfd extends FdResource {
  readonly size: number;
  readonly flagBits: number;
  readonly label: string;
  readonly vmId: number;
  // File pages bound to memslots, kept by the VM's memslot table.
  readonly #info: GuestMemfdInfo;
  #mapping: Mapping | null = null;

  static {
    guestMemfdInfo = (g) => g.#info;
  }

  /** @internal Use Vm.createGuestMemfd(). */
  constructor(fd: number, vmId: number, size: number, flagBits: number) {
    super(fd, 'GuestMemfd');
    this.vmId = vmId;
    this.size = size;
    this.flagBits = flagBits;
    this.label = `guest_memfd #${nextGmem++} (fd ${fd}, VM #${vmId})`;
    this.#info = Object.freeze({ vmId, size, label: this.label, bindings: new IntervalMap<SlotEntry>() });
    for (const k of ['vmId', 'size', 'flagBits', 'label'] as const) {
      Object.defineProperty(this, k, { writable: false, configurable: false });
    }
  }

  /** @internal A real GuestMemfd (brand check on its private field; no look-alike or Proxy). */
  static isGuestMemfd(x: unknown): x is GuestMemfd {
    return typeof x === 'object' && x !== null && #mapping in x;
  }

  /** Create flags, decoded. */
  get flags(): GuestMemfdFlagName[] {
    return (Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[]).filter((n) => (this.flagBits & guestMemfdFlagBits[n]) !== 0);
  }

  /** fallocate(FALLOC_FL_KEEP_SIZE): allocate [offset, offset+length). */
  allocate(offset: U64Input, length: U64Input): void {
    this.fallocate(this.use('allocate'), Falloc.KEEP_SIZE, offset, length);
  }

  /**
   * fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE): discard pages; the
   * guest reads zeros there next time. Punching past the end is allowed, as
   * the kernel allows it.
   */
  punchHole(offset: U64Input, length: U64Input): void {
    this.fallocate(this.use('punch a hole'), Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE, offset, length);
  }

  // Judged (a page range of numbers without making a bigint), then sent.
  // kvm_gmem_allocate() stops with EINTR whenever a signal is pending,
  // keeping the pages it allocated: repeated until it completes
  // (fallocateRepeating).
  private fallocate(fd: number, mode: number, offset: U64Input, length: U64Input): void {
    let o: number | bigint = offset;
    let l: number | bigint = length;
    if (!passesFallocate(this, mode, offset, length)) {
      const op = fallocateOp(mode);
      o = toU64(offset, `${op}: offset`);
      l = toU64(length, `${op}: length`);
      judgeFallocate(this, { mode, offset: o, length: l });
    }
    try {
      fallocateRepeating(fd, mode, o, l);
    } catch (e) {
      throw e instanceof KvmError ? e.withRequest({ fd, mode: fallocateMode(mode), offset: BigInt(o), length: BigInt(l) }) : e;
    }
  }

  /**
   * The file's shared mapping (one per file, owned by it), for files made
   * with the MMAP and INIT_SHARED flags. Without INIT_SHARED every access to
   * the mapping raises SIGBUS, which would kill the process, so that case is
   * refused here.
   */
  map(): Mapping {
    const fd = this.use('map');
    // A mapping the caller unmapped is made anew.
    if (this.#mapping !== null && !this.#mapping.unmapped) return this.#mapping;
    if (!(this.flagBits & GuestMemfdFlag.MMAP)) {
      throw new GuestMemfdRuleError(
        'guest-memfd-not-mappable',
        `${this.label} was created without the 'mmap' flag (mmap gives ENODEV)`,
        { flags: this.flags },
        errno.ENODEV,
      );
    }
    if (!(this.flagBits & GuestMemfdFlag.INIT_SHARED)) {
      throw new GuestMemfdRuleError(
        'guest-memfd-not-mappable',
        `${this.label} was created without 'init-shared': its pages start private and touching the mapping raises SIGBUS`,
        { flags: this.flags },
        0,
      );
    }
    this.#mapping = Mapping.sharedFile(fd, this.size, 0);
    return this.#mapping;
  }

  /** The file ranges bound to memslots, in file order. */
  boundRanges(): BoundRange[] {
    return this.#info.bindings.entries().map((b) => ({
      slot: b.value.id,
      addressSpace: b.value.asId,
      offset: b.start * 4096,
      size: (b.end - b.start) * 4096,
      gpa: b.value.baseGfn * 4096,
    }));
  }

  /** fstat(2) of the file: its size, st_blocks (0: guest_memfd does not account them), st_blksize (the page size), st_ino. */
  stat(): { size: number; blocks: number; blksize: number; ino: number } {
    const s = native.fstat(this.use('stat'));
    return { size: s.size, blocks: s.blocks, blksize: s.blksize, ino: s.ino };
  }

  protected override beforeClose(): void {
    // Unmapped now, or when the last memslot backed by it is deleted: the
    // kernel keeps their userspace_addr (mapping.ts).
    if (this.#mapping !== null) disownMapping(this.#mapping);
    this.#mapping = null;
    // Closing the file makes the kernel drop every binding (kvm_gmem_release);
    // the memslots themselves stay until deleted.
    this.#info.bindings.clear();
  }
}

// The request's mode as it was shown before: 'KEEP_SIZE' or 'PUNCH_HOLE|KEEP_SIZE'.
function fallocateMode(mode: number): string {
  return mode === Falloc.KEEP_SIZE ? 'KEEP_SIZE' : 'PUNCH_HOLE|KEEP_SIZE';
}

const FALLOC_PAGE = 4096n;
const FALLOC_FIRST_CHUNK = 2n << 20n;

/**
 * fallocate(2) of a judged request, repeated on EINTR until it completes.
 * The kernel keeps what it allocated but does not say how far it got, and
 * each try walks the range from its start, checking for a signal before
 * every folio: repeating the whole range could starve under signals that
 * come faster than that walk (a timer every 2 ms under QEMU TCG did, for
 * 64 MiB). So after the first EINTR the rest goes in chunks from 2 MiB,
 * halved on every EINTR down to a page, each chunk done before the next:
 * progress as long as one page fits between two signals.
 */
function fallocateRepeating(fd: number, mode: number, offset: number | bigint, length: number | bigint): void {
  try {
    native.fallocate(fd, mode, offset, length);
    return;
  } catch (e) {
    if (!isEintr(e)) throw e;
  }
  let at = BigInt(offset);
  const end = at + BigInt(length);
  let chunk = FALLOC_FIRST_CHUNK;
  while (at < end) {
    const n = end - at < chunk ? end - at : chunk;
    try {
      native.fallocate(fd, mode, at, n);
      at += n;
    } catch (e) {
      if (!isEintr(e)) throw e;
      if (chunk > FALLOC_PAGE) chunk /= 2n;
    }
  }
}

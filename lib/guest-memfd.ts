// A guest_memfd file (KVM_CREATE_GUEST_MEMFD): guest memory that userspace
// cannot read or write, bound to memslots by file range. fallocate allocates
// (KEEP_SIZE) or discards (PUNCH_HOLE|KEEP_SIZE) pages; with the MMAP flag
// (6.18+) the file can be mapped, and with INIT_SHARED its pages start shared
// so the mapping is usable.
import { AlignmentError, GuestMemfdRuleError, hex, KvmError, retryOnEintr } from './errors.js';
import { Mapping } from './mapping.js';
import type { GuestMemfdInfo, SlotEntry } from './memslot-table.js';
import { native } from './native.js';
import { FdResource } from './resource.js';
import { isPageRange, toU64, type U64Input } from './util/args.js';
import { IntervalMap } from './util/interval-map.js';
import { Falloc, type GuestMemfdFlagName, GuestMemfdFlag, guestMemfdFlagBits } from './uapi.js';

export interface BoundRange {
  slot: number;
  addressSpace: number;
  /** Byte offset in the file. */
  offset: number;
  size: number;
  gpa: number;
}

let nextGmem = 1;

export class GuestMemfd extends FdResource implements GuestMemfdInfo {
  readonly size: number;
  readonly flagBits: number;
  readonly label: string;
  /** File pages bound to memslots (kept by the VM's memslot table). */
  readonly bindings = new IntervalMap<SlotEntry>();
  #mapping: Mapping | null = null;

  /** @internal Use Vm.createGuestMemfd(). */
  constructor(fd: number, readonly vmId: number, size: number, flagBits: number) {
    super(fd, 'GuestMemfd');
    this.size = size;
    this.flagBits = flagBits;
    this.label = `guest_memfd #${nextGmem++} (fd ${fd}, VM #${vmId})`;
  }

  /** Create flags, decoded. */
  get flags(): GuestMemfdFlagName[] {
    return (Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[]).filter((n) => (this.flagBits & guestMemfdFlagBits[n]) !== 0);
  }

  private checkRange(op: string, offset: U64Input, length: U64Input, withinFile: boolean): [bigint, bigint] {
    const o = toU64(offset, `${op}: offset`);
    const l = toU64(length, `${op}: length`);
    const ctx = `${this.label} ${op}`;
    // vfs_fallocate() checks these before kvm_gmem_fallocate() checks alignment.
    if (l === 0n) throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: length is 0 (fallocate refuses an empty range)`, { offset: o, length: l });
    if (o >= 1n << 63n || l >= 1n << 63n) {
      throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: offset ${hex(o)} or length ${hex(l)} is negative as a loff_t (2^63 or more)`, { offset: o, length: l });
    }
    if (o + l > (1n << 63n) - 1n) throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: offset ${hex(o)} + length ${hex(l)} passes the largest file offset`, { offset: o, length: l }, 27 /* EFBIG */);
    if (o & 0xfffn) throw new AlignmentError('offset', o, ctx);
    if (l & 0xfffn) throw new AlignmentError('length', l, ctx);
    if (withinFile && o + l > BigInt(this.size)) {
      throw new GuestMemfdRuleError('guest-memfd-range', `${ctx}: [${hex(o)}, ${hex(o + l)}) extends past the end of the file (size ${hex(this.size)}); guest_memfd never grows`, { offset: o, length: l, size: this.size });
    }
    return [o, l];
  }

  /** fallocate(FALLOC_FL_KEEP_SIZE): allocate [offset, offset+length). */
  allocate(offset: U64Input, length: U64Input): void {
    const fd = this.use('allocate');
    if (isPageRange(offset, length, this.size)) this.fallocate(fd, 'KEEP_SIZE', offset, length);
    else {
      const [o, l] = this.checkRange('allocate', offset, length, true);
      this.fallocate(fd, 'KEEP_SIZE', o, l);
    }
  }

  /**
   * fallocate(FALLOC_FL_PUNCH_HOLE|FALLOC_FL_KEEP_SIZE): discard pages; the
   * guest reads zeros there next time. Punching past the end is allowed, as
   * the kernel allows it.
   */
  punchHole(offset: U64Input, length: U64Input): void {
    const fd = this.use('punch a hole');
    if (isPageRange(offset, length)) this.fallocate(fd, 'PUNCH_HOLE|KEEP_SIZE', offset, length);
    else {
      const [o, l] = this.checkRange('punchHole', offset, length, false);
      this.fallocate(fd, 'PUNCH_HOLE|KEEP_SIZE', o, l);
    }
  }

  // kvm_gmem_allocate() stops with EINTR whenever a signal is pending,
  // keeping the pages it allocated: repeated until it completes.
  private fallocate(fd: number, mode: 'KEEP_SIZE' | 'PUNCH_HOLE|KEEP_SIZE', offset: number | bigint, length: number | bigint): void {
    const bits = mode === 'KEEP_SIZE' ? Falloc.KEEP_SIZE : Falloc.PUNCH_HOLE | Falloc.KEEP_SIZE;
    try {
      retryOnEintr(() => native.fallocate(fd, bits, offset, length));
    } catch (e) {
      throw e instanceof KvmError ? e.withRequest({ fd, mode, offset: BigInt(offset), length: BigInt(length) }) : e;
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
    if (this.#mapping !== null) return this.#mapping;
    if (!(this.flagBits & GuestMemfdFlag.MMAP)) {
      throw new GuestMemfdRuleError('guest-memfd-not-mappable', `${this.label} was created without the 'mmap' flag (mmap gives ENODEV)`, { flags: this.flags }, 19);
    }
    if (!(this.flagBits & GuestMemfdFlag.INIT_SHARED)) {
      throw new GuestMemfdRuleError('guest-memfd-not-mappable', `${this.label} was created without 'init-shared': its pages start private and touching the mapping raises SIGBUS`, { flags: this.flags }, 0);
    }
    this.#mapping = Mapping.sharedFile(fd, this.size, 0);
    return this.#mapping;
  }

  /** The file ranges bound to memslots, in file order. */
  boundRanges(): BoundRange[] {
    return this.bindings.entries().map((b) => ({
      slot: b.value.id,
      addressSpace: b.value.asId,
      offset: b.start * 4096,
      size: (b.end - b.start) * 4096,
      gpa: b.value.baseGfn * 4096,
    }));
  }

  /** fstat(2) of the file: allocated blocks show what allocate/punchHole did. */
  stat(): { size: number; blocks: number } {
    const s = native.fstat(this.use('stat'));
    return { size: s.size, blocks: s.blocks };
  }

  protected override beforeClose(): void {
    this.#mapping?.unmap();
    this.#mapping = null;
    // Closing the file makes the kernel drop every binding (kvm_gmem_release);
    // the memslots themselves stay until deleted.
    this.bindings.clear();
  }
}

// A KVM VM (KVM_CREATE_VM): its memslot table, guest_memfds and memory
// attributes. Every change is judged against the kernel's rules first
// (memslot-rules.ts), sent, and recorded only once the kernel accepted it.
import { AttributeMap, type AttributeRange } from './attributes.js';
import { type Capabilities, capNumber, checkExtensions, readCapabilities } from './capabilities.js';
import { convert, type ConversionOptions, type ConversionRecord, type GpaRange } from './conversion.js';
import {
  AlignmentError, AttributeRuleError, GuestMemfdRuleError, hex, KvmError, MemslotChangeError, MemslotIdError, MissingCapabilityError,
  RangeWrapError, withRequest,
} from './errors.js';
import { GuestMemfd } from './guest-memfd.js';
import { Mapping } from './mapping.js';
import { Memslot, type MemslotBacking, type MemslotOwner } from './memslot.js';
import { apply, judge, type MemslotLimits, type RegionRequest, unexplainedMemslotEinval } from './memslot-rules.js';
import { MemslotTable, type SlotEntry } from './memslot-table.js';
import { native } from './native.js';
import { FdResource } from './resource.js';
import { Vcpu } from './vcpu.js';
import type { CpuidEntry } from './x86/regs.js';
import { isPageRange, toU32, toU64, type U64Input } from './util/args.js';
import {
  Cap, type CapName, CapSince, errno, type GuestMemfdFlagName, guestMemfdFlagBits, guestMemfdFlagSince, MemFlag,
  MemoryAttribute, PAGE_SHIFT, U64_MAX, type VmTypeName,
} from './uapi.js';

export interface GuestMemfdOptions {
  /** Bytes; a non-zero multiple of 4096. */
  size: U64Input;
  /** Create flags: names, or the raw bit mask. Default none. */
  flags?: GuestMemfdFlagName[] | number;
}

export interface MemslotOptions {
  /** Slot id; default: the lowest free id of the address space. */
  slot?: number;
  /** Address space (1 is SMM on x86); default 0. */
  addressSpace?: number;
  gpa: U64Input;
  size: U64Input;
  readonly?: boolean;
  logDirtyPages?: boolean;
  /** Bind private memory from this guest_memfd (sets KVM_MEM_GUEST_MEMFD). */
  guestMemfd?: GuestMemfd;
  guestMemfdOffset?: U64Input;
  /** Shared backing (userspace_addr); default anonymous shared memory. */
  backing?: MemslotBacking;
}

/** What the VM needs from the Kvm that created it. */
export interface VmParent {
  readonly taskSizeMax: bigint;
  /** KVM_GET_VCPU_MMAP_SIZE. */
  vcpuMmapSize(): number;
  /** KVM_GET_SUPPORTED_CPUID. */
  supportedCpuid(): CpuidEntry[];
  /** KVM_CHECK_EXTENSION on /dev/kvm. */
  systemCheck(cap: number): number;
}

let nextVmId = 1;


export class Vm extends FdResource implements MemslotOwner {
  readonly id = nextVmId++;
  readonly #table = new MemslotTable();
  readonly #slots = new Map<SlotEntry, Memslot>();
  readonly #attributes = new AttributeMap();
  readonly #guestMemfds = new Set<GuestMemfd>();
  readonly #children = new Set<Disposable>();
  #caps: Capabilities | undefined;
  // KVM_CHECK_EXTENSION with the fd bound in (see Kvm).
  #check: ((cap: number) => number) | undefined;
  #vcpuCount = 0;
  #limits: MemslotLimits | undefined;

  /** @internal Use Kvm.createVm(). */
  constructor(fd: number, readonly type: VmTypeName, private readonly parent: VmParent) {
    super(fd, 'Vm');
  }

  /** KVM_CHECK_EXTENSION on the VM fd (answers differ per VM type). */
  checkExtension(cap: number | CapName): number {
    const fd = this.use('check an extension');
    return (this.#check ??= native.checkExtensionBind(fd))(capNumber(cap));
  }

  /** KVM_CHECK_EXTENSION on the VM fd for each cap, in one call into the addon. */
  checkExtensions(caps: readonly (number | CapName)[]): number[] {
    return checkExtensions(this.use('check extensions'), caps);
  }

  /** The VM's capabilities, asked of the VM fd once. */
  capabilities(): Capabilities {
    this.use('read capabilities');
    this.#caps ??= readCapabilities(this.fd);
    return this.#caps;
  }

  private limits(): MemslotLimits {
    if (this.#limits === undefined) {
      const c = this.capabilities();
      this.#limits = {
        vmId: this.id,
        nrMemslots: c.nrMemslots,
        addressSpaces: c.addressSpaces,
        guestMemfd: c.guestMemfd,
        readonlyMem: c.readonlyMem,
        taskSizeMax: this.parent.taskSizeMax,
        bindingOverlapErrno: errno.EINVAL,
      };
    }
    return this.#limits;
  }

  private requireCap(cap: CapName, what: string, ok: boolean): void {
    if (!ok) throw new MissingCapabilityError(`KVM_CAP_${cap}`, CapSince[cap], what);
  }

  // ---- guest_memfd -------------------------------------------------------

  /** KVM_CREATE_GUEST_MEMFD. The fd is close-on-exec and owned by the result. */
  createGuestMemfd(opts: GuestMemfdOptions): GuestMemfd {
    const fd = this.use('create a guest_memfd');
    const caps = this.capabilities();
    const size = toU64(opts.size, 'createGuestMemfd: size');
    const flags = this.guestMemfdFlags(opts.flags ?? 0, caps);
    // On 6.12 a default VM answers KVM_CAP_GUEST_MEMFD = 0 on its fd yet can
    // create guest_memfds (it only refuses to bind them), so the system-wide
    // answer is the one that says whether the ioctl exists.
    this.requireCap('GUEST_MEMFD', 'KVM_CREATE_GUEST_MEMFD', this.parent.systemCheck(Cap.GUEST_MEMFD) > 0);
    if (size === 0n || size >= 1n << 63n) {
      throw new GuestMemfdRuleError('guest-memfd-size', `guest_memfd size ${hex(size)} must be non-zero and below 2^63`, { size });
    }
    if (size & 0xfffn) throw new AlignmentError('size', size, 'KVM_CREATE_GUEST_MEMFD');
    let gfd: number;
    try {
      gfd = native.createGuestMemfd(fd, size, flags);
    } catch (e) {
      throw this.kernelError(e, { size, flags }, ['a create flag this kernel rejects although KVM_CAP_GUEST_MEMFD_FLAGS offered it']);
    }
    const g = new GuestMemfd(gfd, this.id, Number(size), flags);
    this.#guestMemfds.add(g);
    return g;
  }

  private guestMemfdFlags(flags: GuestMemfdFlagName[] | number, caps: Capabilities): number {
    let bits: number;
    if (typeof flags === 'number') bits = toU32(flags, 'createGuestMemfd: flags');
    else {
      bits = 0;
      for (const f of flags) {
        const b = guestMemfdFlagBits[f];
        if (b === undefined) throw new TypeError(`createGuestMemfd: unknown flag '${String(f)}' (known: ${Object.keys(guestMemfdFlagBits).join(', ')})`);
        bits |= b;
      }
    }
    const refused = (bits & ~caps.guestMemfdFlagBits) >>> 0;
    if (refused) {
      const names = (Object.keys(guestMemfdFlagBits) as GuestMemfdFlagName[]).filter((n) => refused & guestMemfdFlagBits[n]);
      const since = names.map((n) => `'${n}' since ${guestMemfdFlagSince[n]}`).join(', ');
      throw new GuestMemfdRuleError('guest-memfd-flags',
        `guest_memfd flags ${hex(refused)}${names.length ? ` (${names.join(', ')})` : ''} are not offered to this ${this.type} VM ` +
          `(KVM_CAP_GUEST_MEMFD_FLAGS = ${hex(caps.guestMemfdFlagBits)}${since ? `; ${since}` : ''})`,
        { flags: bits, supported: caps.guestMemfdFlagBits });
    }
    return bits;
  }

  /** The guest_memfds this VM created and that are still open. */
  guestMemfds(): GuestMemfd[] {
    return [...this.#guestMemfds].filter((g) => !g.closed);
  }

  // ---- memslots ------------------------------------------------------------

  /** Adds a memslot (KVM_SET_USER_MEMORY_REGION2, KVM_MR_CREATE). */
  addMemslot(opts: MemslotOptions): Memslot {
    const fd = this.use('add a memslot');
    const caps = this.capabilities();
    this.requireCap('USER_MEMORY2', 'KVM_SET_USER_MEMORY_REGION2', caps.userMemory2);
    const asId = toU32(opts.addressSpace ?? 0, 'addMemslot: addressSpace');
    if (asId >= caps.addressSpaces) {
      throw new MemslotIdError('address-space-out-of-range', `address space ${asId} does not exist; this VM has ${caps.addressSpaces} (KVM_CAP_MULTI_ADDRESS_SPACE)`, { asId, addressSpaces: caps.addressSpaces });
    }
    const gpa = toU64(opts.gpa, 'addMemslot: gpa');
    const size = toU64(opts.size, 'addMemslot: size');
    const gmem = opts.guestMemfd ?? null;
    const gmemFd = gmem === null ? 0 : gmem.fd;
    const gmemOffset = toU64(opts.guestMemfdOffset ?? 0, 'addMemslot: guestMemfdOffset');
    let id: number;
    if (opts.slot === undefined) {
      id = this.#table.freeId(asId, caps.nrMemslots);
      if (id < 0) throw new MemslotChangeError('memslot-table-full', `all ${caps.nrMemslots} memslot ids of address space ${asId} are in use`, { asId });
    } else {
      id = toU32(opts.slot, 'addMemslot: slot');
      if (id >= caps.nrMemslots) {
        throw new MemslotIdError('slot-id-out-of-range', `memslot id ${id} is out of range: this VM has ids 0..${caps.nrMemslots - 1} (KVM_CAP_NR_MEMSLOTS)`, { id, nrMemslots: caps.nrMemslots });
      }
      if (this.#table.get(asId, id) !== undefined) {
        throw new MemslotChangeError('memslot-in-use', `memslot ${id} (address space ${asId}) already exists; delete it first, or use move()/setDirtyLogging()`, { slot: id, asId });
      }
    }
    if (size === 0n) throw new MemslotChangeError('memslot-not-found', `memslot ${id}: size 0 means delete in the kernel; use Memslot.delete()`, { slot: id, asId });
    const flags = (opts.readonly ? MemFlag.READONLY : 0) | (opts.logDirtyPages ? MemFlag.LOG_DIRTY_PAGES : 0) | (gmem ? MemFlag.GUEST_MEMFD : 0);
    const backing = opts.backing ?? { kind: 'anonymous' };
    const req: RegionRequest = {
      slot: asId * 65536 + id,
      flags, gpa, size, userspaceAddr: 0n, guestMemfdOffset: gmemOffset,
      guestMemfd: gmem === null ? null : { kind: 'guest-memfd', info: gmem },
    };
    // Judged once, before anything is mapped: the address of a mapping made
    // below is page aligned and inside the user address space, so it cannot
    // change the verdict; the entry gets the real address afterwards.
    const change = judge(this.limits(), this.#table, req);
    const entry = (change as { entry: SlotEntry }).entry;
    const { mapping, offset, owns } = this.makeBacking(backing, size, gmem, gmemOffset);
    req.userspaceAddr = mapping === null ? 0n : mapping.address + BigInt(offset);
    entry.userspaceAddr = req.userspaceAddr;
    try {
      this.sendRegion(fd, req, gmemFd);
    } catch (e) {
      if (owns) mapping?.unmap();
      throw e;
    }
    apply(this.#table, change);
    const m = new Memslot(this, entry, gmem, backing.kind, mapping, offset, owns);
    this.#slots.set(entry, m);
    return m;
  }

  private makeBacking(b: MemslotBacking, size: bigint, gmem: GuestMemfd | null, gmemOffset: bigint): { mapping: Mapping | null; offset: number; owns: boolean } {
    switch (b.kind) {
      case 'anonymous':
        return { mapping: Mapping.anonymousShared(Number(size)), offset: 0, owns: true };
      case 'fd':
        return { mapping: Mapping.sharedFile(b.fd, Number(size), b.offset ?? 0), offset: 0, owns: true };
      case 'guest-memfd':
        if (gmem === null) throw new TypeError("addMemslot: backing 'guest-memfd' needs the guestMemfd option");
        return { mapping: gmem.map(), offset: Number(gmemOffset), owns: false };
      case 'none':
        return { mapping: null, offset: 0, owns: false };
      default:
        throw new TypeError(`addMemslot: unknown backing kind '${String((b as { kind: unknown }).kind)}'`);
    }
  }

  private sendRegion(fd: number, r: RegionRequest, gmemFd: number): void {
    try {
      native.setUserMemoryRegion2(fd, r.slot, r.flags, r.gpa, r.size, r.userspaceAddr, r.guestMemfdOffset, gmemFd);
    } catch (e) {
      throw this.kernelError(e, regionFields(r, gmemFd), unexplainedMemslotEinval);
    }
  }

  /** Turns a native failure into a KvmError that shows the request (ENOTTY: the missing feature). */
  private kernelError(e: unknown, request: Record<string, unknown>, einval: readonly string[]): unknown {
    if (!(e instanceof KvmError)) return e;
    if (e.errno === errno.ENOTTY) {
      const cap = /GUEST_MEMFD/.test(e.syscall) ? 'GUEST_MEMFD' : /ATTRIBUTES/.test(e.syscall) ? 'MEMORY_ATTRIBUTES' : 'USER_MEMORY2';
      return new MissingCapabilityError(`KVM_CAP_${cap}`, CapSince[cap as CapName], e.syscall.replace(/^ioctl\((.*)\)$/, '$1'));
    }
    return e.withRequest(request, e.errno === errno.EINVAL ? einval : []);
  }

  private memslotOf(m: Memslot, op: string): SlotEntry {
    this.use(op);
    if (m.deleted || this.#slots.get(m.entry) !== m) throw new MemslotChangeError('memslot-not-found', `memslot ${m.slot} (address space ${m.addressSpace}) was already deleted`, { slot: m.slot, asId: m.addressSpace });
    return m.entry;
  }

  /** @internal Memslot.delete(). */
  deleteMemslot(m: Memslot): void {
    const e = this.memslotOf(m, 'delete a memslot');
    const req: RegionRequest = { slot: e.asId * 65536 + e.id, flags: e.flags, gpa: BigInt(e.baseGfn) << 12n, size: 0n, userspaceAddr: e.userspaceAddr, guestMemfdOffset: 0n, guestMemfd: null };
    const change = judge(this.limits(), this.#table, req);
    this.sendRegion(this.fd, req, 0);
    apply(this.#table, change);
    this.#slots.delete(e);
    m.released();
  }

  /** @internal Memslot.move(). */
  moveMemslot(m: Memslot, gpa: U64Input): void {
    const e = this.memslotOf(m, 'move a memslot');
    this.modify(e, toU64(gpa, 'move: gpa'), e.flags);
  }

  /** @internal Memslot.setDirtyLogging(). */
  setMemslotFlags(m: Memslot, flags: number): void {
    const e = this.memslotOf(m, 'change memslot flags');
    this.modify(e, BigInt(e.baseGfn) << 12n, flags);
  }

  private modify(e: SlotEntry, gpa: bigint, flags: number): void {
    const req: RegionRequest = {
      slot: e.asId * 65536 + e.id, flags, gpa, size: BigInt(e.npages) << 12n, userspaceAddr: e.userspaceAddr, guestMemfdOffset: 0n,
      guestMemfd: null,
    };
    const change = judge(this.limits(), this.#table, req);
    this.sendRegion(this.fd, req, 0);
    apply(this.#table, change);
  }

  /** Live memslots, by address space then gpa. */
  memslots(): Memslot[] {
    return this.#table.entries().map((e) => this.#slots.get(e) as Memslot);
  }

  /** The memslot holding `gpa` in address space `addressSpace`. */
  memslotAt(gpa: U64Input, addressSpace = 0): Memslot | undefined {
    const e = this.#table.find(addressSpace, Number(toU64(gpa, 'memslotAt: gpa') >> 12n));
    return e === undefined ? undefined : this.#slots.get(e);
  }

  /** Memslots (any address space) overlapping [startGfn, endGfn). */
  memslotsIn(startGfn: number, endGfn: number): Memslot[] {
    const out: Memslot[] = [];
    for (let as = 0; as < this.limits().addressSpaces; as++) {
      for (const i of this.#table.gfnIndex(as).overlapping(startGfn, endGfn)) out.push(this.#slots.get(i.value) as Memslot);
    }
    return out;
  }

  // ---- memory attributes ---------------------------------------------------

  /**
   * KVM_SET_MEMORY_ATTRIBUTES on [gpa, gpa + size): overwrites every
   * attribute of the range. The shadow map changes only if the kernel accepts.
   */
  setMemoryAttributes(range: GpaRange, attributes: number): void {
    const fd = this.use('set memory attributes');
    const caps = this.capabilities();
    // Every conversion comes through here: a valid range given as numbers
    // below 2^53 is checked and sent without making a bigint; anything else
    // (or any broken rule) takes the exact path, which names the rule.
    const { gpa, size } = range;
    const fast = typeof gpa === 'number' && typeof size === 'number' && isPageRange(gpa, size);
    const gpaB = fast ? 0n : toU64(gpa, 'setMemoryAttributes: gpa');
    const sizeB = fast ? 0n : toU64(size, 'setMemoryAttributes: size');
    toU32(attributes, 'setMemoryAttributes: attributes');
    this.requireCap('MEMORY_ATTRIBUTES', 'KVM_SET_MEMORY_ATTRIBUTES', caps.memoryAttributes.bits !== 0);
    const unsupported = (attributes & ~caps.memoryAttributes.bits) >>> 0;
    if (unsupported) {
      throw new AttributeRuleError('memory-attributes-unsupported',
        `attributes ${hex(attributes)}: bits ${hex(unsupported)} are not supported by this ${this.type} VM (KVM_CAP_MEMORY_ATTRIBUTES = ${hex(caps.memoryAttributes.bits)})`,
        { attributes, supported: caps.memoryAttributes.bits });
    }
    if (fast) {
      this.sendAttributes(fd, gpa, size, attributes);
      this.#attributes.set(gpa / 4096, (gpa + size) / 4096, attributes);
      return;
    }
    if (sizeB === 0n) throw new AttributeRuleError('attribute-range-empty', `attribute range at gpa ${hex(gpaB)} is empty (size 0)`, { gpa: gpaB, size: sizeB });
    if (gpaB + sizeB > U64_MAX) throw new RangeWrapError('gpa', gpaB, sizeB, 'KVM_SET_MEMORY_ATTRIBUTES');
    if (gpaB & 0xfffn) throw new AlignmentError('address', gpaB, 'KVM_SET_MEMORY_ATTRIBUTES');
    if (sizeB & 0xfffn) throw new AlignmentError('size', sizeB, 'KVM_SET_MEMORY_ATTRIBUTES');
    this.sendAttributes(fd, gpaB, sizeB, attributes);
    this.#attributes.set(Number(gpaB >> BigInt(PAGE_SHIFT)), Number((gpaB + sizeB) >> BigInt(PAGE_SHIFT)), attributes);
  }

  private sendAttributes(fd: number, gpa: number | bigint, size: number | bigint, attributes: number): void {
    try {
      native.setMemoryAttributes(fd, gpa, size, attributes, 0);
    } catch (e) {
      throw this.kernelError(e, { address: BigInt(gpa), size: BigInt(size), attributes, flags: 0 }, ['the range is beyond what the attribute xarray covers']);
    }
  }

  /** Attributes of the page holding `gpa` (0 = shared), from the shadow map. */
  attributes(gpa: U64Input): number {
    return this.#attributes.get(Number(toU64(gpa, 'attributes: gpa') >> 12n));
  }

  isPrivate(gpa: U64Input): boolean {
    return (this.attributes(gpa) & MemoryAttribute.PRIVATE) !== 0;
  }

  /** Ranges whose attributes include PRIVATE, merged, in gpa order. */
  privateRanges(): { gpa: number; size: number }[] {
    return this.attributeRanges()
      .filter((r) => r.attributes & MemoryAttribute.PRIVATE)
      .map((r) => ({ gpa: r.gfn * 4096, size: r.npages * 4096 }));
  }

  /** Every range with non-zero attributes. */
  attributeRanges(): AttributeRange[] {
    return this.#attributes.ranges();
  }

  /**
   * Converts [gpa, gpa + size) to private or shared, optionally discarding the
   * copy that became stale. See conversion.ts for the order of steps.
   */
  convert(range: GpaRange, to: 'private' | 'shared', options: ConversionOptions = {}): ConversionRecord {
    this.use('convert memory');
    return convert(this, range, to, options);
  }

  // ---- vCPUs -------------------------------------------------------------

  /** KVM_CREATE_VCPU with its kvm_run page mapped; closed with the VM. */
  createVcpu(id = this.#vcpuCount): Vcpu {
    const fd = this.use('create a vCPU');
    toU32(id, 'createVcpu: id');
    const vfd = withRequest({ id }, () => native.createVcpu(fd, id), (n) => (n === errno.EEXIST ? [`vCPU ${id} already exists`] : []));
    this.#vcpuCount = Math.max(this.#vcpuCount, id + 1);
    return new Vcpu(vfd, id, this, this.parent.vcpuMmapSize());
  }

  /** The CPUID a vCPU of this host can be given (KVM_GET_SUPPORTED_CPUID on /dev/kvm). */
  supportedCpuid(): CpuidEntry[] {
    return this.parent.supportedCpuid();
  }

  // ---- other VM ioctls -----------------------------------------------------

  /** KVM_ENABLE_CAP on the VM. */
  enableCap(cap: number | CapName, args: U64Input[] = [], flags = 0): void {
    const fd = this.use('enable a capability');
    const c = typeof cap === 'number' ? cap : Cap[cap];
    withRequest({ cap: c, flags, args: args.map((a) => hex(a)).join(',') }, () => native.enableCap(fd, c, flags, args));
  }

  /** @internal Registers an object closed together with the VM (vCPUs). */
  adopt(child: Disposable): void {
    this.#children.add(child);
  }

  /** @internal */
  forget(child: Disposable): void {
    this.#children.delete(child);
  }

  // Closing the VM closes everything it created: vCPUs, memslot backings and
  // guest_memfds (each guest_memfd holds a reference that would otherwise
  // keep the VM alive in the kernel).
  protected override beforeClose(): void {
    for (const c of this.#children) c[Symbol.dispose]();
    this.#children.clear();
    for (const m of this.#slots.values()) m.released();
    this.#slots.clear();
    // The table describes a VM that no longer exists: memslots() is [] after close.
    for (const e of this.#table.entries()) this.#table.remove(e);
    for (const g of this.#guestMemfds) g.close();
    this.#guestMemfds.clear();
    this.#attributes.clear();
  }
}

export type { GpaRange, ConversionOptions, ConversionRecord };

function regionFields(r: RegionRequest, gmemFd: number): Record<string, unknown> {
  return {
    slot: r.slot & 0xffff, asId: r.slot >>> 16, flags: r.flags, guest_phys_addr: r.gpa, memory_size: r.size,
    userspace_addr: r.userspaceAddr, guest_memfd_offset: r.guestMemfdOffset, guest_memfd: gmemFd,
  };
}

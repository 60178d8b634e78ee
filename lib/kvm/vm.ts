// A KVM VM (KVM_CREATE_VM): its memslot table, guest_memfds and memory
// attributes. Every method is the same four steps: read and copy the
// arguments (getters run once, before any fd is taken), judge the request
// against the kernel's rules (lib/rules/: pure, in the kernel's order), send
// it, and record the change only once the kernel accepted it.
import { AttributeMap, type AttributeRange } from '../model/attributes.js';
import { capNumber, CheckExtensionFd } from './capabilities.js';
import { convert, type ConversionOptions, type ConversionRecord, type GpaRange } from './conversion.js';
import { GuestMemfdRuleError, hex, KvmError, MemslotChangeError, MissingCapabilityError, withRequest } from '../errors.js';
import { GuestMemfd, guestMemfdInfo } from './guest-memfd.js';
import { Mapping } from './mapping.js';
import { type Memslot, memslotEntry, type MemslotBacking, type MemslotOwner, newMemslot } from './memslot.js';
import { apply, type Change, freeSlotId, judge, type MemslotLimits, type RegionRequest, slotField, unexplainedMemslotEinval } from '../rules/memslot.js';
import type { DefectId } from './defects.js';
import { type GuestMemfdCreateLimits, judgeCreate } from '../rules/guest-memfd.js';
import { type AttributeLimits, applyAttributes, judgeAttributes, passesAttributes } from '../rules/attributes.js';
import { MemslotTable, type SlotEntry } from '../model/memslot-table.js';
import { native } from '../binding/native.js';
import { Vcpu } from './vcpu.js';
import type { CpuidEntry } from './regs.js';
import { argError, toU32, toU64, typeCode, type U64Input } from '../args.js';
import { Cap, type CapName, CapSince, errno, type GuestMemfdFlagName, guestMemfdFlagBits, MemFlag, MemoryAttribute, type VmTypeName } from '../binding/uapi.js';

export interface GuestMemfdOptions {
  /** Bytes; a non-zero multiple of 4096. */
  size: U64Input;
  /** Create flags: names, or the raw 64-bit mask (a number, or a bigint for bits 53..63). Default none. */
  flags?: GuestMemfdFlagName[] | number | bigint;
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
  /** errno for a guest_memfd range already bound, on a VM of `type` (differs by kernel: kernel-behaviour.ts). */
  bindingOverlapErrno(type: VmTypeName): number;
  /** Whether `kvm-gmem probe`'s known-defect probe finds `id` on this kernel (defects.ts). */
  defectPresent(id: DefectId): boolean;
}

let nextVmId = 1;

/** The limits the VM's rules judge against (for the differential tests; not public API). */
export let vmMemslotLimits: (vm: Vm) => MemslotLimits;

export class Vm extends CheckExtensionFd {
  static {
    vmMemslotLimits = (vm) => vm.limits();
  }

  readonly id = nextVmId++;
  readonly #table = new MemslotTable();
  readonly #slots = new Map<SlotEntry, Memslot>();
  readonly #attributes = new AttributeMap();
  readonly #guestMemfds = new Set<GuestMemfd>();
  readonly #children = new Set<Disposable>();
  #vcpuCount = 0;
  #limits: MemslotLimits | undefined;
  #gmemLimits: GuestMemfdCreateLimits | undefined;
  #attributeLimits: AttributeLimits | undefined;
  // What a Memslot asks of its VM; not methods of Vm, so not public API.
  readonly #memslotOwner: MemslotOwner = {
    delete: (m) => this.#deleteMemslot(m),
    move: (m, gpa) => this.#modify(this.#memslotOf(m, 'move a memslot'), toU64(gpa, 'move: gpa'), null),
    setFlags: (m, flags) => {
      const e = this.#memslotOf(m, 'change memslot flags');
      this.#modify(e, BigInt(e.baseGfn) << 12n, flags);
    },
  };

  /** @internal Use Kvm.createVm(). */
  constructor(
    fd: number,
    readonly type: VmTypeName,
    private readonly parent: VmParent,
  ) {
    super(fd, 'Vm');
  }

  // The limits each rule module judges against, read from the VM's
  // capabilities once (they do not change for the life of the VM).
  private limits(): MemslotLimits {
    if (this.#limits === undefined) {
      const c = this.capabilities();
      const parent = this.parent;
      const type = this.type;
      let overlapErrno: number | undefined;
      this.#limits = {
        vmId: this.id,
        userMemory2: c.userMemory2,
        nrMemslots: c.nrMemslots,
        addressSpaces: c.addressSpaces,
        // guest_memfd memslots need the v2 ioctl's fields.
        guestMemfd: c.guestMemfd && c.userMemory2,
        readonlyMem: c.readonlyMem,
        taskSizeMax: parent.taskSizeMax,
        // Asked only when a request overlaps a binding: the answer costs a
        // scratch VM the first time (kernel-behaviour.ts).
        get bindingOverlapErrno(): number {
          return (overlapErrno ??= parent.bindingOverlapErrno(type));
        },
      };
    }
    return this.#limits;
  }

  private gmemLimits(): GuestMemfdCreateLimits {
    // On 6.12 a default VM answers KVM_CAP_GUEST_MEMFD = 0 on its fd yet can
    // create guest_memfds (it only refuses to bind them), so the system-wide
    // answer is the one that says whether the ioctl exists.
    this.#gmemLimits ??= { ioctl: this.parent.systemCheck(Cap.GUEST_MEMFD) > 0, supportedFlags: this.capabilities().guestMemfdFlagBits, vmType: this.type };
    return this.#gmemLimits;
  }

  private attributeLimits(): AttributeLimits {
    // /dev/kvm answers the bits the kernel can ever take (non-zero when the
    // ioctl is built in); the VM fd what this VM takes (0 on a default VM).
    this.#attributeLimits ??= {
      ioctl: this.parent.systemCheck(Cap.MEMORY_ATTRIBUTES) !== 0,
      supported: this.capabilities().memoryAttributes.bits,
      vmType: this.type,
    };
    return this.#attributeLimits;
  }

  // ---- guest_memfd -------------------------------------------------------

  /** KVM_CREATE_GUEST_MEMFD. The fd is close-on-exec and owned by the result. */
  createGuestMemfd(opts: GuestMemfdOptions): GuestMemfd {
    // The options are read (getters run) once, before the fd is taken.
    const size = toU64(opts?.size, 'createGuestMemfd: size');
    const flags = flagMask(copyFlags(opts.flags));
    const fd = this.use('create a guest_memfd');
    judgeCreate(this.gmemLimits(), { size, flags });
    let gfd: number;
    try {
      gfd = native.createGuestMemfd(fd, size, flags);
    } catch (e) {
      throw this.kernelError(e, 'GUEST_MEMFD', { size, flags }, ['a create flag this kernel rejects although KVM_CAP_GUEST_MEMFD_FLAGS offered it']);
    }
    // Judged: only offered bits are left, all below 2^32.
    const g = new GuestMemfd(gfd, this.id, Number(size), Number(flags));
    this.#guestMemfds.add(g);
    return g;
  }

  /** The guest_memfds this VM created and that are still open. */
  guestMemfds(): GuestMemfd[] {
    return [...this.#guestMemfds].filter((g) => !g.closed);
  }

  // ---- memslots ------------------------------------------------------------

  /** Adds a memslot (KVM_SET_USER_MEMORY_REGION2, KVM_MR_CREATE). */
  addMemslot(options: MemslotOptions): Memslot {
    // Every option is read (getters run) once, here, before the fd is taken:
    // a getter that closes this VM and opens another (which gets the same fd
    // number) then meets a ClosedError instead of sending the memslot there.
    const opts = readMemslotOptions(options);
    this.use('add a memslot');
    const limits = this.limits();
    const { asId, gpa, size, gmem, gmemOffset, backing } = opts;
    const gmemFd = gmem === null ? 0 : guestMemfdFd(gmem);
    const id = opts.slot ?? freeSlotId(limits, this.#table, asId);
    const flags = (opts.readonly ? MemFlag.READONLY : 0) | (opts.logDirtyPages ? MemFlag.LOG_DIRTY_PAGES : 0) | (gmem ? MemFlag.GUEST_MEMFD : 0);
    const req: RegionRequest = {
      slot: slotField(limits, asId, id),
      flags,
      gpa,
      size,
      userspaceAddr: 0n,
      guestMemfdOffset: gmemOffset,
      guestMemfd: gmem === null ? null : { kind: 'guest-memfd', info: guestMemfdInfo(gmem) },
      create: true,
    };
    // Judged once, before anything is mapped: the address of a mapping made
    // below is page aligned and inside the user address space, so it cannot
    // change the verdict; the entry gets the real address afterwards.
    let change: Change;
    try {
      change = judge(limits, this.#table, req);
    } catch (e) {
      throw this.withDefectNote(e, req);
    }
    const entry = (change as { entry: SlotEntry }).entry;
    const { mapping, offset, owns } = this.makeBacking(backing, size, gmem, gmemOffset);
    req.userspaceAddr = mapping === null ? 0n : mapping.address + BigInt(offset);
    entry.userspaceAddr = req.userspaceAddr;
    try {
      // Nothing above runs the caller's code, but the VM is checked once more
      // right before the ioctl (ClosedError): the memslot goes to it or nowhere.
      this.sendRegion(this.use('add a memslot'), req, gmemFd);
    } catch (e) {
      if (owns) mapping?.unmap();
      throw e;
    }
    apply(this.#table, change);
    const m = newMemslot(this.#memslotOwner, entry, gmem, backing.kind, mapping, offset, owns);
    this.#slots.set(entry, m);
    return m;
  }

  private makeBacking(b: BackingCopy, size: bigint, gmem: GuestMemfd | null, gmemOffset: bigint): { mapping: Mapping | null; offset: number; owns: boolean } {
    switch (b.kind) {
      case 'anonymous':
        return { mapping: Mapping.anonymousShared(size), offset: 0, owns: true };
      case 'fd':
        return { mapping: Mapping.sharedFile(b.fd, size, b.offset), offset: 0, owns: true };
      case 'guest-memfd':
        if (gmem === null) throw argError("addMemslot: backing 'guest-memfd' needs the guestMemfd option");
        // The class's own map(), whatever the object's prototype says.
        return { mapping: GuestMemfd.prototype.map.call(gmem), offset: Number(gmemOffset), owns: false };
      case 'none':
        return { mapping: null, offset: 0, owns: false };
    }
  }

  // The rules refuse what a correct kernel refuses. Where this kernel has a
  // known defect that would have accepted the request, the error says so
  // (the probe runs once, only on this path).
  private withDefectNote(e: unknown, r: RegionRequest): unknown {
    const end = r.guestMemfdOffset + r.size;
    if (!(e instanceof GuestMemfdRuleError) || e.rule !== 'guest-memfd-range' || r.guestMemfdOffset >= 1n << 63n || end < 1n << 63n) return e;
    if (!this.parent.defectPresent('gmem-bind-offset-overflow')) return e;
    e.message +=
      '; this kernel would have ACCEPTED it (known defect gmem-bind-offset-overflow: offset + size overflows a signed loff_t in kvm_gmem_bind(); `kvm-gmem probe` lists it)';
    return e;
  }

  private sendRegion(fd: number, r: RegionRequest, gmemFd: number): void {
    try {
      // Before 6.8 only v1 exists; judge() has refused guest_memfd there.
      if (this.limits().userMemory2) native.setUserMemoryRegion2(fd, r.slot, r.flags, r.gpa, r.size, r.userspaceAddr, r.guestMemfdOffset, gmemFd);
      else native.setUserMemoryRegion(fd, r.slot, r.flags, r.gpa, r.size, r.userspaceAddr);
    } catch (e) {
      throw this.kernelError(e, 'USER_MEMORY2', regionFields(r, gmemFd), unexplainedMemslotEinval);
    }
  }

  /**
   * Turns a native failure into a KvmError that shows the request. ENOTTY
   * means the ioctl does not exist: the capability that adds it is named.
   */
  private kernelError(e: unknown, cap: CapName, request: Record<string, unknown>, einval: readonly string[]): unknown {
    if (!(e instanceof KvmError)) return e;
    if (e.errno === errno.ENOTTY) return new MissingCapabilityError(`KVM_CAP_${cap}`, CapSince[cap], e.syscall.replace(/^ioctl\((.*)\)$/, '$1'));
    return e.withRequest(request, e.errno === errno.EINVAL ? einval : []);
  }

  // The entry of a live memslot of this VM. A Memslot whose entry is not in
  // the table was deleted (or belongs to no VM): the kernel would say EINVAL.
  #memslotOf(m: Memslot, op: string): SlotEntry {
    this.use(op);
    const e = memslotEntry(m);
    if (m.deleted || this.#slots.get(e) !== m)
      throw new MemslotChangeError('memslot-not-found', `memslot ${m.slot} (address space ${m.addressSpace}) was already deleted`, {
        slot: m.slot,
        asId: m.addressSpace,
      });
    return e;
  }

  // Memslot.delete(): KVM_MR_DELETE.
  #deleteMemslot(m: Memslot): void {
    const e = this.#memslotOf(m, 'delete a memslot');
    this.#changeSlot(e, { size: 0n });
    this.#slots.delete(e);
    m.released();
  }

  // Memslot.move() and setDirtyLogging(): KVM_MR_MOVE / KVM_MR_FLAGS_ONLY
  // (flags null: unchanged).
  #modify(e: SlotEntry, gpa: bigint, flags: number | null): void {
    this.#changeSlot(e, { gpa, flags: flags ?? e.flags });
  }

  // A request for an existing slot (its own fields with `changes`): judged,
  // sent, and recorded once the kernel accepted it.
  #changeSlot(e: SlotEntry, changes: Partial<RegionRequest>): void {
    const req: RegionRequest = {
      slot: e.asId * 65536 + e.id,
      flags: e.flags,
      gpa: BigInt(e.baseGfn) << 12n,
      size: BigInt(e.npages) << 12n,
      userspaceAddr: e.userspaceAddr,
      guestMemfdOffset: 0n,
      guestMemfd: null,
      ...changes,
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
    const { gpa, size } = range; // read once, before the fd is taken
    const attrs = toU32(attributes, 'setMemoryAttributes: attributes');
    const fd = this.use('set memory attributes');
    const limits = this.attributeLimits();
    // Every conversion comes through here: a valid range given as numbers
    // below 2^53 is checked and sent without making a bigint; anything else
    // (or any broken rule) takes the exact path, which names the rule.
    if (passesAttributes(limits, gpa, size, attrs)) {
      this.sendAttributes(fd, gpa, size as number, attrs);
      this.#attributes.set(gpa / 4096, (gpa + (size as number)) / 4096, attrs);
      return;
    }
    const req = { gpa: toU64(gpa, 'setMemoryAttributes: gpa'), size: toU64(size, 'setMemoryAttributes: size'), attributes: BigInt(attrs), flags: 0n };
    const change = judgeAttributes(limits, req);
    this.sendAttributes(fd, req.gpa, req.size, attrs);
    applyAttributes(this.#attributes, change);
  }

  private sendAttributes(fd: number, gpa: number | bigint, size: number | bigint, attributes: number): void {
    try {
      native.setMemoryAttributes(fd, gpa, size, attributes, 0);
    } catch (e) {
      throw this.kernelError(e, 'MEMORY_ATTRIBUTES', { address: BigInt(gpa), size: BigInt(size), attributes, flags: 0 }, [
        'the range is beyond what the attribute xarray covers',
      ]);
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
    const vfd = withRequest(
      { id },
      () => native.createVcpu(fd, id),
      (n) => (n === errno.EEXIST ? [`vCPU ${id} already exists`] : []),
    );
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
    const c = capNumber(cap);
    if (!Array.isArray(args)) throw argError('enableCap: args must be an array', 'ERR_INVALID_ARG_TYPE');
    const a = Array.from(args, (v, i) => toU64(v, `enableCap: args[${i}]`)); // copied before the fd is taken
    const fd = this.use('enable a capability');
    withRequest({ cap: c, flags, args: a.map((v) => hex(v)).join(',') }, () => native.enableCap(fd, c, flags, a));
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

type BackingCopy = { kind: 'anonymous' } | { kind: 'fd'; fd: number; offset: bigint } | { kind: 'guest-memfd' } | { kind: 'none' };

interface MemslotOptionsCopy {
  slot: number | undefined;
  asId: number;
  gpa: bigint;
  size: bigint;
  readonly: boolean;
  logDirtyPages: boolean;
  gmem: GuestMemfd | null;
  gmemOffset: bigint;
  backing: BackingCopy;
}

// Reads every field of addMemslot's options once, into plain values.
function readMemslotOptions(o: MemslotOptions): MemslotOptionsCopy {
  if (typeof o !== 'object' || o === null) throw argError('addMemslot: options must be an object', 'ERR_INVALID_ARG_TYPE');
  const slot = o.slot === undefined ? undefined : toU32(o.slot, 'addMemslot: slot');
  const asId = toU32(o.addressSpace ?? 0, 'addMemslot: addressSpace');
  const gpa = toU64(o.gpa, 'addMemslot: gpa');
  const size = toU64(o.size, 'addMemslot: size');
  const readonly = Boolean(o.readonly);
  const logDirtyPages = Boolean(o.logDirtyPages);
  const g = o.guestMemfd ?? null;
  if (g !== null && !GuestMemfd.isGuestMemfd(g))
    throw argError('addMemslot: guestMemfd must be a GuestMemfd made by Vm.createGuestMemfd()', 'ERR_INVALID_ARG_TYPE');
  const gmemOffset = toU64(o.guestMemfdOffset ?? 0, 'addMemslot: guestMemfdOffset');
  return { slot, asId, gpa, size, readonly, logDirtyPages, gmem: g, gmemOffset, backing: readBacking(o.backing) };
}

function readBacking(b: MemslotBacking | undefined): BackingCopy {
  if (b === undefined) return { kind: 'anonymous' };
  if (typeof b !== 'object' || b === null) throw argError('addMemslot: backing must be an object with a kind', 'ERR_INVALID_ARG_TYPE');
  const kind: unknown = b.kind;
  switch (kind) {
    case 'anonymous':
    case 'guest-memfd':
    case 'none':
      return { kind };
    case 'fd': {
      const f = b as { fd: unknown; offset?: unknown };
      const fd = f.fd;
      if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < 0 || fd > 0x7fffffff)
        throw argError(`addMemslot: backing.fd must be a file descriptor, got ${String(fd)}`, typeCode(fd, 'number'));
      return { kind, fd, offset: toU64(f.offset ?? 0, 'addMemslot: backing.offset') };
    }
    default:
      throw argError(`addMemslot: unknown backing kind '${typeof kind === 'string' ? kind : typeof kind}'`, typeCode(kind, 'string'));
  }
}

// createGuestMemfd's flags as the kernel's 64-bit mask: names, or the raw
// mask as a number (a safe integer) or a bigint (any of the 64 bits), kept in
// the type given so a rule error shows what was asked. Unknown bits are the
// rules' to refuse (guest-memfd-flags), with the kernel's EINVAL.
function flagMask(flags: readonly GuestMemfdFlagName[] | number | bigint): number | bigint {
  if (typeof flags === 'bigint') return toU64(flags, 'createGuestMemfd: flags');
  if (typeof flags === 'number') {
    toU64(flags, 'createGuestMemfd: flags'); // a safe integer >= 0, or a TypeError
    return flags;
  }
  let bits = 0;
  for (const f of flags) {
    const b = guestMemfdFlagBits[f];
    if (b === undefined) throw argError(`createGuestMemfd: unknown flag '${String(f)}' (known: ${Object.keys(guestMemfdFlagBits).join(', ')})`);
    bits |= b;
  }
  return bits;
}

function copyFlags(f: unknown): readonly GuestMemfdFlagName[] | number | bigint {
  if (f === undefined) return 0;
  if (typeof f === 'number' || typeof f === 'bigint') return f;
  if (Array.isArray(f)) return Array.from(f as GuestMemfdFlagName[]);
  throw argError('createGuestMemfd: flags must be an array of flag names, a number or a bigint', 'ERR_INVALID_ARG_TYPE');
}

// A guest_memfd's fd read from the object itself, not through a getter
// (ClosedError if it was closed).
function guestMemfdFd(g: GuestMemfd): number {
  return GuestMemfd.fdOf(g, 'bind to a memslot');
}

function regionFields(r: RegionRequest, gmemFd: number): Record<string, unknown> {
  return {
    slot: r.slot & 0xffff,
    asId: r.slot >>> 16,
    flags: r.flags,
    guest_phys_addr: r.gpa,
    memory_size: r.size,
    userspace_addr: r.userspaceAddr,
    guest_memfd_offset: r.guestMemfdOffset,
    guest_memfd: gmemFd,
  };
}

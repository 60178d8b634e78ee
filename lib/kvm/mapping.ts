// A memory mapping owned by exactly one object. Views are plain typed arrays
// over ArrayBuffers that the native layer detaches on unmap, so a view kept
// past unmap() cannot reach unmapped memory (a Uint8Array reads as length 0;
// a DataView throws TypeError on every access, as V8 does for a detached
// buffer).
//
// A mapping may be larger than any one ArrayBuffer (Node 20 makes none over
// buffer.constants.MAX_LENGTH, 4 GiB): views are then cut from windows of
// MAX_LENGTH bytes that start every MAX_LENGTH / 2 bytes, made on first use,
// so every view up to half that length fits one window; a longer view gets
// an ArrayBuffer of its own. A view longer than MAX_LENGTH is a RangeError.
import { constants as bufferConstants } from 'node:buffer';
import { ClosedError, hex, MappingInUseError } from '../errors.js';
import { native } from '../binding/native.js';
import { type ProbeAccess, probeArgs, probeResult, type ProbeResult } from '../binding/probe.js';
import { Mmap } from '../binding/uapi.js';
import { argError, nodeList, rangeError, toU32, toU64, typeCode, type U64Input } from '../args.js';

const MAX_VIEW = bufferConstants.MAX_LENGTH;
const STRIDE = Math.floor(MAX_VIEW / 2);

interface Live {
  handle: object;
  /** Window k covers [k * STRIDE, k * STRIDE + MAX_VIEW) of the mapping. */
  windows: Map<number, ArrayBuffer>;
  /** Buffers of views that fit no window, held weakly (unmap detaches those alive). */
  exact: WeakRef<ArrayBuffer>[];
}

/**
 * A memslot whose userspace_addr points into a mapping it does not own (a
 * guest_memfd's own mapping) keeps it mapped: while the kernel holds that
 * address, a munmap would let the next mmap (another VM's memory, the
 * allocator's heap) land where the guest and KVM still write.
 */
export let retainMapping: (m: Mapping, user: string) => void;
/** Drops a user; a mapping its owner gave up while in use is unmapped now. */
export let releaseMapping: (m: Mapping, user: string) => void;
/** The owner's unmap (GuestMemfd.close()): now, or when the last user lets go. */
export let disownMapping: (m: Mapping) => void;

export class Mapping implements Disposable {
  #live: Live | null;
  readonly address: bigint;
  readonly length: number;
  /**
   * false for Mapping.unchecked(): touching it may fault, so it has no views;
   * read and write it with probe().
   */
  readonly checked: boolean;
  // Memslots using this mapping without owning it, by name; and whether the
  // owner has let go (unmap when the last one is released).
  readonly #users: string[] = [];
  #disowned = false;
  // A reservation's live MAP_FIXED children, and a child's reservation.
  readonly #children = new Set<Mapping>();
  #parent: Mapping | null = null;

  static {
    retainMapping = (m, user) => {
      m.#use('back a memslot');
      m.#users.push(user);
    };
    releaseMapping = (m, user) => {
      const i = m.#users.indexOf(user);
      if (i >= 0) m.#users.splice(i, 1);
      if (m.#users.length === 0 && m.#disowned) m.unmap();
    };
    disownMapping = (m) => {
      m.#disowned = true;
      if (m.#users.length === 0) m.unmap();
    };
  }

  private constructor(m: { handle: object; buffer: ArrayBuffer; address: bigint }, length: number, checked = true) {
    this.#live = { handle: m.handle, windows: new Map([[0, m.buffer]]), exact: [] };
    this.address = m.address;
    this.length = length;
    this.checked = checked;
  }

  /** MAP_SHARED|MAP_ANONYMOUS read-write memory (shmem, so MADV_REMOVE frees it). */
  static anonymousShared(length: U64Input): Mapping {
    const len = mappingLength(length, 'Mapping.anonymousShared: length');
    const m = native.mmap(-1, len, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED | Mmap.MAP_ANONYMOUS | Mmap.MAP_NORESERVE, 0, false);
    return new Mapping(m, len);
  }

  /**
   * MAP_PRIVATE|MAP_ANONYMOUS read-write memory (VM_MEM_SRC_ANONYMOUS of the
   * kernel's selftests): MADV_DONTNEED frees its pages and they read as zero
   * next. It cannot fault, so it offers views like anonymousShared().
   */
  static anonymousPrivate(length: U64Input): Mapping {
    const len = mappingLength(length, 'Mapping.anonymousPrivate: length');
    const m = native.mmap(-1, len, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_PRIVATE | Mmap.MAP_ANONYMOUS | Mmap.MAP_NORESERVE, 0, false);
    return new Mapping(m, len);
  }

  /**
   * MAP_SHARED read-write mapping of `fd` at `offset`. A range past the end
   * of a regular file (RangeError), or a guest_memfd without 'mmap' and
   * 'init-shared' (TypeError), is refused: touching such pages raises SIGBUS.
   */
  static sharedFile(fd: number, length: U64Input, offset: U64Input = 0): Mapping {
    const len = mappingLength(length, 'Mapping.sharedFile: length');
    const off = toU64(offset, 'Mapping.sharedFile: offset');
    const m = native.mmap(fd, len, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED, off, true);
    return new Mapping(m, len);
  }

  /**
   * mmap(2) as asked, for tests of what the kernel does with a mapping: any
   * `prot` (PROT_*) and `flags` (MAP_*: MAP_SHARED or MAP_PRIVATE, MAP_ANONYMOUS
   * without an fd, MAP_NORESERVE, MAP_HUGETLB...; MAP_FIXED is refused, it
   * could replace live memory), any fd and offset, with none of the
   * file-size and guest_memfd checks of sharedFile(). Such a mapping may
   * fault, so it offers no views (bytes() and dataView() throw): probe()
   * reads and writes it, and a SIGBUS or SIGSEGV comes back as a value.
   */
  static unchecked(o: { length: U64Input; fd?: number; offset?: U64Input; prot?: number; flags?: number }): Mapping {
    const { len, fd, offset, prot, flags } = mmapOptions(o, 'Mapping.unchecked');
    const m = native.mmap(fd, len, prot, flags, offset, false);
    return new Mapping(m, len, false);
  }

  /**
   * Address space reserved PROT_NONE (MAP_PRIVATE|MAP_ANONYMOUS|
   * MAP_NORESERVE), for mapFixed() to place mappings at chosen addresses in
   * it, as the kernel's selftests reserve twice a PMD and map a guest_memfd
   * at the PMD-aligned address inside. No views; touching it is SIGSEGV
   * (probe() says so).
   */
  static reserve(length: U64Input): Mapping {
    const len = mappingLength(length, 'Mapping.reserve: length');
    return new Mapping(native.reserve(len), len, false);
  }

  /**
   * mmap(2) with MAP_FIXED at `this.address + at`, inside this reservation
   * and over none of its live fixed mappings (`at` and `length` whole
   * pages): `prot`, `flags` (MAP_SHARED by default; MAP_FIXED is added), `fd`
   * and `offset` as in unchecked(), whose probe-only rules it shares. Its
   * unmap() puts PROT_NONE back instead of leaving a hole, and the
   * reservation cannot be unmapped while it lives. A refused mmap leaves the
   * range reserved.
   */
  mapFixed(o: { at: U64Input; length: U64Input; fd?: number; offset?: U64Input; prot?: number; flags?: number }): Mapping {
    const at = toU64(o.at, 'Mapping.mapFixed: at');
    const { len, fd, offset, prot, flags } = mmapOptions(o, 'Mapping.mapFixed');
    const child = new Mapping(native.mmapFixed(this.#use('place a fixed mapping').handle, at, len, prot, flags, fd, offset), len, false);
    child.#parent = this;
    this.#children.add(child);
    return child;
  }

  /** @internal A vCPU's kvm_run page (an anonymous inode: no file size to check). */
  static vcpuRun(fd: number, length: number): Mapping {
    const m = native.mmap(fd, length, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED, 0, false);
    return new Mapping(m, length);
  }

  get unmapped(): boolean {
    return this.#live === null;
  }

  #use(op: string): Live {
    if (this.#live === null) throw new ClosedError('Mapping', op);
    return this.#live;
  }

  #checkRange(offset: number, length: number, what: string): void {
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > this.length) {
      throw rangeError(`${what} [${offset}, ${offset + length}) is outside the mapping (length ${this.length})`);
    }
  }

  /** The ArrayBuffer and the offset in it that hold [offset, offset + length). */
  #locate(offset: number, length: number, op: string): [ArrayBuffer, number] {
    this.#checkRange(offset, length, 'view');
    const live = this.#use(op);
    if (!this.checked) throw argError('Mapping.unchecked() has no views (touching it may fault): read and write it with probe()');
    const first = live.windows.get(0) as ArrayBuffer;
    if (offset + length <= first.byteLength) return [first, offset];
    if (length > MAX_VIEW) {
      throw rangeError(`a view is at most ${MAX_VIEW} bytes (buffer.constants.MAX_LENGTH); take several views of [${offset}, ${offset + length})`);
    }
    const k = Math.floor(offset / STRIDE);
    const start = k * STRIDE;
    if (offset + length <= start + MAX_VIEW) {
      let w = live.windows.get(k);
      if (w === undefined) {
        w = native.mappingView(live.handle, start, Math.min(MAX_VIEW, this.length - start));
        live.windows.set(k, w);
      }
      return [w, offset - start];
    }
    const b = native.mappingView(live.handle, offset, length);
    if (live.exact.length >= 64) live.exact = live.exact.filter((r) => r.deref() !== undefined);
    live.exact.push(new WeakRef(b));
    return [b, 0];
  }

  /** A byte view of [offset, offset + length) of the mapping. */
  bytes(offset = 0, length = this.length - offset): Uint8Array {
    const [b, o] = this.#locate(offset, length, 'create a view');
    return new Uint8Array(b, o, length);
  }

  /** A DataView of [offset, offset + length). */
  dataView(offset = 0, length = this.length - offset): DataView {
    const [b, o] = this.#locate(offset, length, 'create a view');
    return new DataView(b, o, length);
  }

  /**
   * Reads (`data` holds a copy of what was read) or writes `byte` to every
   * byte of [offset, offset + length), in order, with SIGBUS and SIGSEGV
   * caught: a fault stops the probe and comes back as the result, with its
   * address, instead of killing the process (TEST_EXPECT_SIGBUS). A read
   * copies at most buffer.constants.MAX_LENGTH bytes.
   */
  probe(offset: number, length = 1, access: ProbeAccess = 'read', byte = 0): ProbeResult {
    const a = probeArgs(access, byte, 'Mapping.probe');
    this.#checkRange(offset, length, 'probe');
    return probeResult(native.probeMapping(this.#use('probe').handle, offset, length, a.write, a.byte));
  }

  /**
   * madvise(2) with any advice but the two that poison pages
   * (MADV_HWPOISON, MADV_SOFT_OFFLINE: a view would then kill the process):
   * e.g. Mmap.MADV_DONTNEED, MADV_REMOVE, MADV_HUGEPAGE, MADV_COLLAPSE.
   */
  advise(offset: number, length: number, advice: number): void {
    if (advice === Mmap.MADV_HWPOISON || advice === Mmap.MADV_SOFT_OFFLINE) {
      throw argError(`Mapping.advise: advice ${advice} (${advice === Mmap.MADV_HWPOISON ? 'MADV_HWPOISON' : 'MADV_SOFT_OFFLINE'}) poisons pages, refused`);
    }
    native.madvise(this.#use('madvise').handle, offset, length, toU32(advice, 'Mapping.advise: advice'));
  }

  /** mbind(2) of [offset, offset + length): `mode` a Mempolicy.MPOL_*, `nodes` node numbers, `flags` MPOL_MF_*. */
  mbind(offset: number, length: number, mode: number, nodes: readonly number[], flags = 0): void {
    const n = nodeList(nodes, 'Mapping.mbind');
    native.mbind(this.#use('mbind').handle, offset, length, toU32(mode, 'Mapping.mbind: mode'), n, toU32(flags, 'Mapping.mbind: flags'));
  }

  /** get_mempolicy(2) with MPOL_F_ADDR at `offset`: the policy of that page, and its nodes. */
  getMempolicy(offset = 0): { mode: number; nodes: number[] } {
    return native.getMempolicy(this.#use('get_mempolicy').handle, offset, 0);
  }

  /** move_pages(2) asking only: per page from `offset`, the node it is on, or -errno (-ENOENT: not present). */
  movePages(offset: number, pages: number): number[] {
    return native.movePages(this.#use('move_pages').handle, offset, toU32(pages, 'Mapping.movePages: pages'));
  }

  /** madvise(MADV_REMOVE): frees the backing pages; they read as zero next. */
  discard(offset: number, length: number): void {
    native.madvise(this.#use('discard pages').handle, offset, length, Mmap.MADV_REMOVE);
  }

  /**
   * Unmaps; every view detaches. Idempotent. Refused (MappingInUseError)
   * while a memslot's userspace_addr points into it: delete those first.
   */
  unmap(): void {
    const live = this.#live;
    if (live === null) return;
    if (this.#users.length > 0) throw new MappingInUseError(this.address, [...this.#users]);
    if (this.#children.size > 0) {
      throw new MappingInUseError(
        this.address,
        [...this.#children].map((c) => `the fixed mapping at ${hex(c.address)}`),
        'unmap',
      );
    }
    const views = [...live.windows.values()];
    for (const r of live.exact) {
      const b = r.deref();
      if (b !== undefined) views.push(b);
    }
    // A TypeError means nothing was done (a vCPU runner thread still uses
    // this kvm_run page): the mapping stays live.
    try {
      native.munmap(live.handle, views);
    } catch (e) {
      if (!(e instanceof TypeError)) this.#gone();
      throw e;
    }
    this.#gone();
  }

  #gone(): void {
    this.#live = null;
    if (this.#parent !== null) this.#parent.#children.delete(this);
    this.#parent = null;
  }

  [Symbol.dispose](): void {
    this.unmap();
  }
}

/**
 * unchecked()'s and mapFixed()'s mmap options, each read once, in order:
 * length, fd (-1: anonymous), offset, prot (read-write), flags (MAP_SHARED,
 * with MAP_ANONYMOUS when there is no fd).
 */
function mmapOptions(
  o: { length: U64Input; fd?: number; offset?: U64Input; prot?: number; flags?: number },
  fn: string,
): { len: number; fd: number; offset: bigint; prot: number; flags: number } {
  if (o === null || typeof o !== 'object') throw argError(`${fn}: options must be an object, got ${o === null ? 'null' : typeof o}`, 'ERR_INVALID_ARG_TYPE');
  const len = mappingLength(o.length, `${fn}: length`);
  const fd = o.fd ?? -1;
  const offset = toU64(o.offset ?? 0, `${fn}: offset`);
  const prot = toU32(o.prot ?? Mmap.PROT_READ | Mmap.PROT_WRITE, `${fn}: prot`);
  const flags = toU32(o.flags ?? (fd === -1 ? Mmap.MAP_SHARED | Mmap.MAP_ANONYMOUS : Mmap.MAP_SHARED), `${fn}: flags`);
  if (typeof fd !== 'number' || !Number.isInteger(fd) || fd < -1)
    throw argError(`${fn}: fd must be an fd number or -1, got ${String(fd)}`, typeCode(fd, 'number'));
  return { len, fd, offset, prot, flags };
}

function mappingLength(v: U64Input, name: string): number {
  const n = toU64(v, name);
  if (n === 0n || n > BigInt(Number.MAX_SAFE_INTEGER)) throw rangeError(`${name} must be 1..2^53-1 bytes, got ${n}`);
  return Number(n);
}

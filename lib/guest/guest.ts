// Tiny guests written in TypeScript: one call builds the memory, the code,
// the CPU state (real mode, or 64-bit long mode with identity-mapped page
// tables, GDT, TSS, stack and CPUID) and a vCPU; runUntilDone() runs the
// ucall loop and turns the guest's asserts, unexpected exits and deadlines
// into errors that say where the guest was.
import type { ConversionRecord } from '../kvm/conversion.js';
import { rangeError, readTimeoutMs, toU64, type U64Input } from '../args.js';
import { KvmGmemError, MissingCapabilityError } from '../errors.js';
import type { GuestMemfd } from '../kvm/guest-memfd.js';
import type { Memslot } from '../kvm/memslot.js';
import type { Vcpu } from '../kvm/vcpu.js';
import { ExitReason, type HypercallExit, type MemoryFaultExit, type VcpuExit } from '../kvm/vcpu-exit.js';
import type { Vm } from '../kvm/vm.js';
import { Assembler, type AssembleResult } from '../x86/asm.js';
import { Layout, Selector } from './layout.js';
import { GuestIo, Ucall, UCALL_PORT } from './ucall.js';

export interface GuestMemoryOptions {
  /** Bytes of guest memory at gpa 0 (default 2 MiB). */
  size?: number;
  /**
   * 'anonymous' (default): anonymous shared memory. 'guest-memfd': a
   * guest_memfd bound to the memslot; on hosts with the mmap and
   * init-shared flags its own mapping is the shared backing, so the guest
   * runs from guest_memfd memory; on private-memory VMs the memslot gets
   * anonymous shared backing plus the guest_memfd for private pages.
   */
  kind?: 'anonymous' | 'guest-memfd';
}

export interface GuestOptions {
  memory?: GuestMemoryOptions;
  /** Entry point gpa (default Layout.CODE, or Layout.REAL_MODE_CODE). */
  entry?: number;
  vcpuId?: number;
  /** Emits the guest program. */
  code: (a: Assembler, io: GuestIo) => void;
}

export const KVM_HC_MAP_GPA_RANGE = 12n;
export const KVM_MAP_GPA_RANGE_ENCRYPTED = 1n << 4n;

export interface RunUntilDoneOptions {
  /**
   * Deadline for the whole run in milliseconds, as Vcpu.run() reads it (an
   * integer 1..2^31-1; 0: no deadline; anything else a TypeError), except
   * that absent means the default, 10 s.
   */
  timeoutMs?: number;
  /** Runs at each guest sync(n), before the guest continues. */
  onSync?: (n: number, guest: Guest) => void | Promise<void>;
  /**
   * Implicit conversion: on a MEMORY_FAULT exit, convert the faulting range
   * to what the guest accessed and re-enter. (On a 'sw-protected' VM a
   * private fault can only mean the page has no private backing, so it is
   * converted to shared.)
   */
  convertOnMemoryFault?: boolean | { discard?: boolean };
  /**
   * Guest-requested conversion: on a KVM_HC_MAP_GPA_RANGE hypercall exit,
   * convert with discard (punch-hole to shared, drop shared pages to private)
   * and return 0 to the guest. Needs KVM_CAP_EXIT_HYPERCALL enabled
   * (Guest.enableMapGpaRangeExits()).
   */
  mapGpaRange?: boolean;
  /** Handles any other exit; return true to re-enter, false to fail. */
  onExit?: (exit: VcpuExit, guest: Guest) => boolean | Promise<boolean>;
}

export interface RunResult {
  syncs: number[];
  prints: bigint[];
  exits: number;
  conversions: ConversionRecord[];
}

/** The guest reported a failed assert. */
export class GuestAssertError extends KvmGmemError {
  override name = 'GuestAssertError';
  readonly code = 'ERR_KVM_GUEST_ASSERT';
  constructor(
    readonly assertCode: number,
    readonly rip: bigint,
    readonly syncs: number[],
  ) {
    super(`guest assert ${assertCode} failed at rip 0x${rip.toString(16)} (after syncs [${syncs.join(', ')}])`);
  }
}

/** The guest exited in a way the run loop does not handle. */
export class UnexpectedExitError extends KvmGmemError {
  override name = 'UnexpectedExitError';
  readonly code = 'ERR_KVM_UNEXPECTED_EXIT';
  constructor(
    readonly exit: VcpuExit,
    readonly rip: bigint,
  ) {
    super(
      `unexpected ${exit.kind} exit at rip 0x${rip.toString(16)}: ${JSON.stringify(exit, (_k, v: unknown) => (typeof v === 'bigint' ? `0x${v.toString(16)}` : v instanceof Uint8Array ? [...v] : v))}`,
    );
  }
}

/** The run's deadline passed. */
export class GuestTimeoutError extends KvmGmemError {
  override name = 'GuestTimeoutError';
  readonly code = 'ERR_KVM_GUEST_TIMEOUT';
  constructor(
    readonly timeoutMs: number,
    readonly rip: bigint,
  ) {
    super(`guest did not finish within ${timeoutMs} ms (kicked out at rip 0x${rip.toString(16)})`);
  }
}

function mib2(n: number): boolean {
  return n > 0 && n % 4096 === 0;
}

export class Guest implements Disposable {
  #closed = false;

  private constructor(
    readonly vm: Vm,
    readonly vcpu: Vcpu,
    readonly memslot: Memslot,
    readonly guestMemfd: GuestMemfd | null,
    readonly program: AssembleResult,
    readonly mode: 'real' | 'long',
  ) {}

  /** A 16-bit real-mode guest entered at `entry` (default 0x1000) with CS base 0. */
  static realMode(vm: Vm, options: GuestOptions): Guest {
    const entry = options.entry ?? Layout.REAL_MODE_CODE;
    const { memslot, gmem } = guestMemory(vm, options.memory);
    let vcpu: Vcpu | undefined;
    try {
      const program = assemble(16, entry, options.code);
      memslot.view(entry, program.bytes.length).set(program.bytes);
      vcpu = vm.createVcpu(options.vcpuId ?? 0);
      vcpu.setCpuid(vm.supportedCpuid());
      vcpu.updateSregs((s) => {
        for (const seg of [s.cs, s.ds, s.es, s.ss, s.fs, s.gs]) {
          seg.base = 0n;
          seg.selector = 0;
        }
      });
      vcpu.updateRegs((r) => {
        r.rip = BigInt(entry);
        r.rsp = 0x8000n;
        r.rflags = 2n;
      });
      return new Guest(vm, vcpu, memslot, gmem, program, 'real');
    } catch (e) {
      // Nothing of a guest that failed to build stays behind.
      vcpu?.close();
      memslot.delete();
      gmem?.close();
      throw e;
    }
  }

  /**
   * A 64-bit guest in long mode from its first instruction: page tables
   * identity-map 4 GiB with 2 MiB pages, a GDT with a 64-bit code segment,
   * data segments and a TSS, a stack below Layout.STACK_TOP, and the
   * supported CPUID (a KVM with hardware checks refuses EFER.LMA without it).
   */
  static longMode(vm: Vm, options: GuestOptions): Guest {
    const entry = options.entry ?? Layout.CODE;
    const { memslot, gmem } = guestMemory(vm, options.memory);
    let vcpu: Vcpu | undefined;
    try {
      writeTables(memslot);
      const program = assemble(64, entry, options.code);
      memslot.view(entry, program.bytes.length).set(program.bytes);
      vcpu = vm.createVcpu(options.vcpuId ?? 0);
      vcpu.setCpuid(vm.supportedCpuid());
      enterLongMode(vcpu);
      vcpu.updateRegs((r) => {
        for (const k of Object.keys(r) as (keyof typeof r)[]) r[k] = 0n;
        r.rip = BigInt(entry);
        r.rsp = BigInt(Layout.STACK_TOP);
        r.rflags = 2n;
      });
      return new Guest(vm, vcpu, memslot, gmem, program, 'long');
    } catch (e) {
      // Nothing of a guest that failed to build stays behind.
      vcpu?.close();
      memslot.delete();
      gmem?.close();
      throw e;
    }
  }

  /** The program listing (address, bytes, instruction). */
  get listing(): string {
    return this.program.listing;
  }

  /** Guest address of a label of the program. */
  label(name: string): number {
    const v = this.program.labels.get(name);
    if (v === undefined) throw rangeError(`no label '${name}' in the guest program`);
    return Number(v);
  }

  /** A view of guest memory (the shared backing) at [gpa, gpa + length). */
  view(gpa: U64Input, length: number): Uint8Array {
    // A gpa past 2^53 is outside any guest memory; as a number it still is.
    return this.memslot.view(Number(toU64(gpa, 'view: gpa')), length);
  }

  /** KVM_ENABLE_CAP(KVM_CAP_EXIT_HYPERCALL) for KVM_HC_MAP_GPA_RANGE. */
  enableMapGpaRangeExits(): void {
    const offered = BigInt(this.vm.checkExtension('EXIT_HYPERCALL'));
    if ((offered & (1n << KVM_HC_MAP_GPA_RANGE)) === 0n) {
      throw new MissingCapabilityError('KVM_CAP_EXIT_HYPERCALL', '5.19', 'KVM_HC_MAP_GPA_RANGE exits');
    }
    this.vm.enableCap('EXIT_HYPERCALL', [1n << KVM_HC_MAP_GPA_RANGE]);
  }

  /**
   * Runs the guest until it calls done(): handles ucalls, the optional
   * conversion handlers and onExit; fails with GuestAssertError,
   * UnexpectedExitError or GuestTimeoutError. The vCPU runs on its own
   * thread, so the event loop (and this run's deadline) keeps working.
   */
  async runUntilDone(options: RunUntilDoneOptions = {}): Promise<RunResult> {
    const timeoutMs = options.timeoutMs === undefined ? 10_000 : options.timeoutMs;
    const ms = readTimeoutMs(timeoutMs, 'runUntilDone'); // -1: no deadline
    const deadline = ms < 0 ? Infinity : Date.now() + ms;
    const result: RunResult = { syncs: [], prints: [], exits: 0, conversions: [] };
    for (;;) {
      const left = deadline - Date.now();
      const exit = ms < 0 ? await this.vcpu.run() : left > 0 ? await this.vcpu.run({ timeoutMs: left }) : ({ kind: 'interrupted', deadline: true } as const);
      result.exits++;
      if (exit.kind === 'interrupted') {
        // The run's own deadline (a timer of the vCPU thread, never early),
        // or someone else's kick (vcpu.kick(), an abort, a signal).
        if (exit.deadline || Date.now() >= deadline) throw new GuestTimeoutError(timeoutMs, this.vcpu.getRegs().rip);
        throw new UnexpectedExitError(exit, this.vcpu.getRegs().rip);
      }
      if (exit.kind === 'io' && exit.port === UCALL_PORT && exit.direction === 'out' && exit.size === 4) {
        if (await this.#ucall(exit.data, result, options)) return result;
        continue;
      }
      if (await this.#handle(exit, result, options)) continue;
      throw new UnexpectedExitError(exit, this.vcpu.getRegs().rip);
    }
  }

  // Returns true when the guest said done.
  async #ucall(data: Uint8Array, result: RunResult, options: RunUntilDoneOptions): Promise<boolean> {
    const cmd = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    const regs = this.vcpu.getRegs();
    switch (cmd) {
      case Ucall.SYNC: {
        const n = Number(regs.rsi);
        result.syncs.push(n);
        await options.onSync?.(n, this);
        return false;
      }
      case Ucall.PRINT:
        result.prints.push(regs.rsi);
        return false;
      case Ucall.ASSERT:
        throw new GuestAssertError(Number(regs.rsi), regs.rip, result.syncs);
      case Ucall.DONE:
        return true;
      default:
        throw new UnexpectedExitError({ kind: 'io', exitReason: ExitReason.IO, direction: 'out', size: 4, port: UCALL_PORT, count: 1, data }, regs.rip);
    }
  }

  async #handle(exit: VcpuExit, result: RunResult, options: RunUntilDoneOptions): Promise<boolean> {
    if (exit.kind === 'memory-fault' && options.convertOnMemoryFault) {
      const discard = typeof options.convertOnMemoryFault === 'object' && options.convertOnMemoryFault.discard === true;
      result.conversions.push(this.#convertFault(exit, discard));
      return true;
    }
    if (exit.kind === 'hypercall' && exit.nr === KVM_HC_MAP_GPA_RANGE && options.mapGpaRange) {
      result.conversions.push(this.#mapGpaRange(exit));
      return true;
    }
    return (await options.onExit?.(exit, this)) ?? false;
  }

  #convertFault(exit: MemoryFaultExit, discard: boolean): ConversionRecord {
    // On a 'sw-protected' VM an access is private exactly when its page is
    // (the attributes are the source of truth), so a private fault means the
    // page has no private backing, e.g. its memslot has no guest_memfd:
    // converting it to private again would fault forever; shared lets the
    // guest go on.
    const to = exit.private && this.vm.type !== 'sw-protected' ? 'private' : 'shared';
    return this.vm.convert({ gpa: exit.gpa, size: exit.size }, to, { discard });
  }

  // As the kernel's private_mem_conversions_test host side does.
  #mapGpaRange(exit: HypercallExit): ConversionRecord {
    const [gpa, npages, attrs] = exit.args as [bigint, bigint, bigint];
    const rec = this.vm.convert({ gpa, size: npages * 4096n }, attrs & KVM_MAP_GPA_RANGE_ENCRYPTED ? 'private' : 'shared', { discard: true });
    exit.ret = 0n;
    return rec;
  }

  /** Closes the vCPU, deletes the memslot, closes the guest_memfd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.vcpu.close();
    if (!this.vm.closed && !this.memslot.deleted) this.memslot.delete();
    this.guestMemfd?.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function assemble(bits: 16 | 64, entry: number, code: (a: Assembler, io: GuestIo) => void): AssembleResult {
  const a = new Assembler({ bits, origin: entry });
  code(a, new GuestIo(a));
  return a.assemble();
}

function guestMemory(vm: Vm, opts: GuestMemoryOptions = {}): { memslot: Memslot; gmem: GuestMemfd | null } {
  const size = opts.size ?? 2 << 20;
  if (!mib2(size) || size < Layout.MIN_MEMORY)
    throw rangeError(`guest memory size 0x${size.toString(16)} must be a multiple of 4096 and at least 0x${Layout.MIN_MEMORY.toString(16)}`);
  if ((opts.kind ?? 'anonymous') === 'anonymous') return { memslot: vm.addMemslot({ gpa: 0, size }), gmem: null };
  const caps = vm.capabilities();
  const mappable = caps.guestMemfdFlags.includes('mmap') && caps.guestMemfdFlags.includes('init-shared');
  if (!mappable && !caps.memoryAttributes.private) {
    throw new MissingCapabilityError(
      'KVM_CAP_GUEST_MEMFD_FLAGS',
      '6.18',
      'a guest running from guest_memfd memory (needs the mmap and init-shared flags, or a VM type with private memory)',
    );
  }
  const gmem = vm.createGuestMemfd({ size, flags: mappable ? ['mmap', 'init-shared'] : [] });
  try {
    const memslot = vm.addMemslot({ gpa: 0, size, guestMemfd: gmem, backing: mappable ? { kind: 'guest-memfd' } : { kind: 'anonymous' } });
    return { memslot, gmem };
  } catch (e) {
    gmem.close();
    throw e;
  }
}

// Page tables, GDT and TSS for long mode (see layout.ts for addresses).
function writeTables(m: Memslot): void {
  const v = new DataView(m.view(0, Layout.CODE).buffer, m.view(0, Layout.CODE).byteOffset, Layout.CODE);
  const P_RW = 0x3n;
  v.setBigUint64(Layout.PML4, BigInt(Layout.PDPT) | P_RW, true);
  for (let i = 0; i < 4; i++) {
    const pd = Layout.PD + i * 0x1000;
    v.setBigUint64(Layout.PDPT + i * 8, BigInt(pd) | P_RW, true);
    for (let j = 0; j < 512; j++) {
      // 2 MiB page: present, writable, PS.
      v.setBigUint64(pd + j * 8, (BigInt(i * 512 + j) << 21n) | 0x83n, true);
    }
  }
  v.setBigUint64(Layout.GDT + Selector.CODE64, 0x00af9b000000ffffn, true);
  v.setBigUint64(Layout.GDT + Selector.DATA, 0x00cf93000000ffffn, true);
  // 64-bit TSS descriptor (16 bytes): limit 0x67, type 0xb (busy), present.
  const tss = BigInt(Layout.TSS);
  const lo = 0x67n | ((tss & 0xffffffn) << 16n) | (0x8bn << 40n) | (((tss >> 24n) & 0xffn) << 56n);
  v.setBigUint64(Layout.GDT + Selector.TSS, lo, true);
  v.setBigUint64(Layout.GDT + Selector.TSS + 8, tss >> 32n, true);
}

function enterLongMode(vcpu: Vcpu): void {
  vcpu.updateSregs((s) => {
    const code = { base: 0n, limit: 0xffffffff, selector: Selector.CODE64, type: 11, present: 1, dpl: 0, db: 0, s: 1, l: 1, g: 1, avl: 0, unusable: 0 };
    const data = { ...code, selector: Selector.DATA, type: 3, db: 1, l: 0 };
    s.cs = code;
    s.ds = { ...data };
    s.es = { ...data };
    s.fs = { ...data };
    s.gs = { ...data };
    s.ss = { ...data };
    s.tr = { base: BigInt(Layout.TSS), limit: 0x67, selector: Selector.TSS, type: 11, present: 1, dpl: 0, db: 0, s: 0, l: 0, g: 0, avl: 0, unusable: 0 };
    s.gdt = { base: BigInt(Layout.GDT), limit: 0x27 };
    s.cr0 = 0x80050033n; // PG | AM | WP | NE | ET | MP | PE
    s.cr3 = BigInt(Layout.PML4);
    s.cr4 = 0x620n; // OSXMMEXCPT | OSFXSR | PAE
    s.efer = 0x500n; // LMA | LME
  });
}

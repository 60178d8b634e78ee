// Tiny guests written in TypeScript: one call builds the memory, the code,
// the CPU state (real mode, or 64-bit long mode with identity-mapped page
// tables, GDT, TSS, stack and CPUID) and a vCPU; runUntilDone() runs the
// ucall loop and turns the guest's asserts, unexpected exits and deadlines
// into errors that say where the guest was.
import type { ConversionRecord } from '../kvm/conversion.js';
import { argError, rangeError, readTimeoutMs, toU64, type U64Input } from '../args.js';
import { KvmGmemError, MissingCapabilityError } from '../errors.js';
import type { GuestMemfd } from '../kvm/guest-memfd.js';
import type { Memslot } from '../kvm/memslot.js';
import { type RunOptions, readResumeMmioWrites, type Vcpu } from '../kvm/vcpu.js';
import { ExitReason, type HypercallExit, type MemoryFaultExit, type VcpuExit } from '../kvm/vcpu-exit.js';
import type { Vm } from '../kvm/vm.js';
import { Assembler, type AssembleResult } from '../x86/asm.js';
import { EXCEPTION_NAMES, EXCEPTION_VECTORS, emitExceptionStubs, writeIdt } from './idt.js';
import { Layout, Selector } from './layout.js';
import { type MapOptions, PageTables } from './page-tables.js';
import { type PhysAllocOptions, type PhysPages, physPages } from './phys-pages.js';
import { type AssertSite, formatGuestPrintf, GuestIo, Ucall, UCALL_PORT } from './ucall.js';

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
  /**
   * 64-bit guests: the program's own handlers (labels, ending in iretq) for
   * exception vectors 0..31; every other vector reports to the host as a
   * GuestExceptionError.
   */
  exceptionHandlers?: Readonly<Record<number, string>>;
  /** Arguments for vCPU 0 in RDI, RSI, RDX, RCX, R8, R9 (as setArgs()). */
  args?: readonly U64Input[];
}

export interface AddVcpuOptions {
  /** vCPU id (default: the VM's next). */
  id?: number;
  /** Entry point: a label of the program or a gpa (default: the guest's entry). */
  entry?: string | number;
  /** Arguments in RDI, RSI, RDX, RCX, R8, R9 (as setArgs()). */
  args?: readonly U64Input[];
  /** Pages of stack, from the page allocator (default 4). */
  stackPages?: number;
}

/**
 * The options of one runUntilDone()/runAll(), copied: resumeMmioWrites is
 * read and checked here, once for all vCPUs and runs (a getter is not asked
 * again), and handed to every Vcpu.run() as plain bigints.
 */
function copyRunOptions(options: RunUntilDoneOptions, op: string): RunUntilDoneOptions {
  return { ...options, resumeMmioWrites: readResumeMmioWrites(options.resumeMmioWrites, op) };
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
  /**
   * Runs at each guest sync(n), before the guest continues. `ucall` says
   * which vCPU synced (under runAll() any of them) and holds the ucall's
   * argument registers (UCALL_ARG_REGS: RSI, RCX, RDI, R8, R9; args[0] is
   * n as a bigint), for a sync sent by emitUcall(a, Ucall.SYNC, ...) with
   * more than one argument, as GUEST_SYNC_ARGS() sends them.
   */
  onSync?: (n: number, guest: Guest, ucall: SyncUcall) => void | Promise<void>;
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
  /** Receives each line of the guest's printf (they are also in RunResult.printed). */
  onPrintf?: (line: string, guest: Guest) => void;
  /**
   * MMIO writes each vCPU's thread resumes by itself, never reaching onExit
   * (Vcpu.run()'s RunOptions.resumeMmioWrites): the guest keeps running
   * while the JavaScript thread is busy. Counted in RunResult.resumedMmioWrites.
   */
  resumeMmioWrites?: RunOptions['resumeMmioWrites'];
}

/** What onSync learns of a sync besides n: the vCPU that sent it and its argument registers. */
export interface SyncUcall {
  vcpu: Vcpu;
  /** RSI, RCX, RDI, R8, R9 at the ucall (UCALL_ARG_REGS order). */
  args: bigint[];
}

export interface RunResult {
  syncs: number[];
  prints: bigint[];
  /** What the guest's io.printf() calls formatted, in order. */
  printed: string[];
  exits: number;
  /** MMIO writes resumed on the vCPU's thread (RunUntilDoneOptions.resumeMmioWrites); not in `exits`. */
  resumedMmioWrites: number;
  conversions: ConversionRecord[];
}

/** What an io.assertCmp()/assertEq() that failed compared. */
export interface GuestAssertValues {
  op: string;
  actual: bigint;
  expected: bigint;
  /** How the operands were written in the program, e.g. 'rax' and '42'. */
  actualOperand: string;
  expectedOperand: string;
}

/**
 * The guest reported a failed assert: io.assert() (its code, and its message
 * if it gave one) or io.assertCmp()/assertEq() (both values, the operator
 * and the message; assertCode is then the assert's site number).
 */
export class GuestAssertError extends KvmGmemError {
  override name = 'GuestAssertError';
  readonly code = 'ERR_KVM_GUEST_ASSERT';
  constructor(
    readonly assertCode: number,
    readonly rip: bigint,
    readonly syncs: number[],
    readonly assertMessage?: string,
    readonly values?: GuestAssertValues,
  ) {
    const what = values
      ? `guest assert failed at rip 0x${rip.toString(16)}: ${values.actualOperand} ${values.op} ${values.expectedOperand}: actual 0x${values.actual.toString(16)} (${values.actual}), expected 0x${values.expected.toString(16)} (${values.expected})`
      : `guest assert ${assertCode} failed at rip 0x${rip.toString(16)}`;
    super(`${what}${assertMessage === undefined ? '' : `: ${assertMessage}`} (after syncs [${syncs.join(', ')}])`);
  }
}

/**
 * An exception the guest had no handler for (the selftests' ucall
 * UNHANDLED): the vector and its mnemonic, the error code the CPU pushed
 * (0 for vectors without one), the faulting rip, and CR2 (the address of a #PF).
 */
export class GuestExceptionError extends KvmGmemError {
  override name = 'GuestExceptionError';
  readonly code = 'ERR_KVM_GUEST_EXCEPTION';
  readonly mnemonic: string;
  constructor(
    readonly vector: number,
    readonly errorCode: bigint,
    readonly rip: bigint,
    readonly cr2: bigint,
    readonly vcpuId: number,
  ) {
    const mnemonic = EXCEPTION_NAMES[vector] ?? `vector-${vector}`;
    super(
      `unhandled guest exception ${mnemonic} (vector ${vector}) on vCPU ${vcpuId} at rip 0x${rip.toString(16)}, error code 0x${errorCode.toString(16)}` +
        (vector === 14 ? `, cr2 0x${cr2.toString(16)}` : ''),
    );
    this.mnemonic = mnemonic;
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

const ARG_REGS = ['rdi', 'rsi', 'rdx', 'rcx', 'r8', 'r9'] as const;

/** Reads the arguments of setArgs()/args once: at most six u64 values. */
function readArgs(args: unknown, op: string): bigint[] {
  if (!Array.isArray(args)) throw argError(`${op}: args must be an array of at most 6 integers`, 'ERR_INVALID_ARG_TYPE');
  const copy = [...(args as unknown[])];
  if (copy.length > ARG_REGS.length) throw rangeError(`${op}: at most ${ARG_REGS.length} arguments (RDI, RSI, RDX, RCX, R8, R9), got ${copy.length}`);
  return copy.map((v, i) => toU64(v, `${op}: args[${i}]`));
}

function setArgRegs(vcpu: Vcpu, args: readonly bigint[]): void {
  vcpu.updateRegs((r) => {
    args.forEach((v, i) => {
      r[ARG_REGS[i]!] = v;
    });
  });
}

export class Guest implements Disposable {
  #closed = false;
  readonly #vcpus: Vcpu[];
  readonly #io: GuestIo;
  readonly #tables: PageTables | null;

  private constructor(
    readonly vm: Vm,
    readonly vcpu: Vcpu,
    readonly memslot: Memslot,
    readonly guestMemfd: GuestMemfd | null,
    readonly program: AssembleResult,
    readonly mode: 'real' | 'long',
    io: GuestIo,
  ) {
    this.#vcpus = [vcpu];
    this.#io = io;
    this.#tables = mode === 'long' ? new PageTables(vm, Layout.PML4, physPages(vm)) : null;
  }

  /** A 16-bit real-mode guest entered at `entry` (default 0x1000) with CS base 0. */
  static realMode(vm: Vm, options: GuestOptions): Guest {
    const entry = options.entry ?? Layout.REAL_MODE_CODE;
    const code = options.code;
    const { memslot, gmem } = guestMemory(vm, options.memory);
    let vcpu: Vcpu | undefined;
    try {
      const { program, io } = assemble(16, entry, code);
      memslot.view(entry, program.bytes.length).set(program.bytes);
      // The real-mode stack (below 0x8000) and the program are the builder's.
      physPages(vm).reserve(memslot, 0, Math.max(0x8000, entry + program.bytes.length));
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
      return new Guest(vm, vcpu, memslot, gmem, program, 'real', io);
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
   * data segments and a TSS, an IDT whose stubs report unexpected exceptions
   * (GuestExceptionError), a stack below Layout.STACK_TOP, and the
   * supported CPUID (a KVM with hardware checks refuses EFER.LMA without it).
   * Everything below Layout.CODE and the program's pages are taken in the
   * VM's page allocator (allocPages() hands out the rest).
   */
  static longMode(vm: Vm, options: GuestOptions): Guest {
    const entry = options.entry ?? Layout.CODE;
    const code = options.code;
    const handlers = readHandlers(options.exceptionHandlers);
    const args = options.args === undefined ? [] : readArgs(options.args, 'longMode');
    const { memslot, gmem } = guestMemory(vm, options.memory);
    let vcpu: Vcpu | undefined;
    try {
      writeTables(memslot);
      const { program, io } = assemble(64, entry, code, (a) => emitExceptionStubs(a));
      memslot.view(entry, program.bytes.length).set(program.bytes);
      const idt = memslot.view(Layout.IDT, EXCEPTION_VECTORS * 16);
      writeIdt(new DataView(idt.buffer, idt.byteOffset, idt.byteLength), program.labels, handlers);
      const phys = physPages(vm);
      phys.reserve(memslot, 0, Layout.CODE);
      phys.reserve(memslot, entry, program.bytes.length);
      vcpu = vm.createVcpu(options.vcpuId ?? 0);
      setUpLongMode(vcpu, vm, BigInt(entry), BigInt(Layout.STACK_TOP), args);
      return new Guest(vm, vcpu, memslot, gmem, program, 'long', io);
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

  /** The guest's vCPUs: vcpu first, then those addVcpu() made. */
  get vcpus(): readonly Vcpu[] {
    return [...this.#vcpus];
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

  /** The VM's guest-physical page allocator (shared by every Guest on the VM). */
  get phys(): PhysPages {
    return physPages(this.vm);
  }

  /**
   * vm_phy_pages_alloc: `count` contiguous free pages (from this guest's
   * memslot unless options.memslot names another), never the builder's
   * tables, stack, IDT or program, nor pages handed out before. Returns the gpa.
   */
  allocPages(count: number, options: PhysAllocOptions = {}): number {
    const o = { ...options };
    return physPages(this.vm).alloc(count, { ...o, memslot: o.memslot ?? this.memslot });
  }

  /**
   * virt_map: maps [gva, gva + size) to [gpa, gpa + size) in the 64-bit
   * guest's page tables, with 4 KiB (default) or 2 MiB pages, at any
   * canonical gva (above 4 GiB too); new table pages come from allocPages().
   * Map before running, or have the guest flush its TLB.
   */
  map(gva: U64Input, gpa: U64Input, size: U64Input, options: MapOptions = {}): void {
    this.#longTables('map').map(gva, gpa, size, options);
  }

  /** addr_gva2gpa: the gpa `gva` maps to in the guest's page tables, or null. */
  translate(gva: U64Input): bigint | null {
    return this.#longTables('translate').translate(gva);
  }

  /** vcpu_args_set: puts up to six arguments in RDI, RSI, RDX, RCX, R8, R9 of `vcpu` (default: vCPU 0). */
  setArgs(args: readonly U64Input[], vcpu: Vcpu = this.vcpu): void {
    const values = readArgs(args, 'setArgs');
    if (!this.#vcpus.includes(vcpu)) throw rangeError("setArgs: the vCPU is not one of this guest's");
    setArgRegs(vcpu, values);
  }

  /**
   * Another vCPU of this 64-bit guest, sharing its memory, page tables, GDT
   * and IDT, with its own stack (from allocPages()), entered at `entry`.
   * runAll() runs every vCPU at once, each on its own thread.
   */
  addVcpu(options: AddVcpuOptions = {}): Vcpu {
    const { id, entry, args, stackPages = 4 } = { ...options };
    if (this.#closed) throw rangeError('addVcpu: the guest is closed');
    if (this.mode !== 'long') throw rangeError('addVcpu: only 64-bit guests have more than one vCPU');
    const values = args === undefined ? [] : readArgs(args, 'addVcpu');
    const rip = entry === undefined ? this.#vcpus[0]!.getRegs().rip : typeof entry === 'string' ? BigInt(this.label(entry)) : toU64(entry, 'addVcpu: entry');
    if (!Number.isSafeInteger(stackPages) || stackPages < 1) throw rangeError(`addVcpu: stackPages must be a positive integer, got ${String(stackPages)}`);
    const stack = this.allocPages(stackPages);
    const vcpu = id === undefined ? this.vm.createVcpu() : this.vm.createVcpu(id);
    try {
      setUpLongMode(vcpu, this.vm, rip, BigInt(stack + stackPages * 4096), values);
    } catch (e) {
      vcpu.close();
      throw e;
    }
    this.#vcpus.push(vcpu);
    return vcpu;
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
   * Runs vCPU 0 until it calls done(): handles ucalls, the optional
   * conversion handlers and onExit; fails with GuestAssertError,
   * GuestExceptionError, UnexpectedExitError or GuestTimeoutError. The vCPU
   * runs on its own thread, so the event loop (and this run's deadline)
   * keeps working.
   */
  async runUntilDone(options: RunUntilDoneOptions = {}): Promise<RunResult> {
    return this.#loop(this.vcpu, copyRunOptions(options, 'runUntilDone'), undefined);
  }

  /**
   * Runs every vCPU at once (each on its own thread) until each calls
   * done(); the results are in vcpus order. The first failure kicks the
   * other vCPUs out and is what rejects; the deadline is for the whole run.
   */
  async runAll(options: RunUntilDoneOptions = {}): Promise<RunResult[]> {
    const o = copyRunOptions(options, 'runAll');
    const stop = new AbortController();
    let first: { error: unknown } | undefined;
    const runs = this.#vcpus.map((v) =>
      this.#loop(v, o, stop.signal).catch((e: unknown) => {
        if (first === undefined) {
          first = { error: e };
          stop.abort();
        }
        return null;
      }),
    );
    const results = await Promise.all(runs);
    if (first !== undefined) throw first.error;
    return results as RunResult[];
  }

  async #loop(vcpu: Vcpu, options: RunUntilDoneOptions, stop: AbortSignal | undefined): Promise<RunResult> {
    const timeoutMs = options.timeoutMs === undefined ? 10_000 : options.timeoutMs;
    const ms = readTimeoutMs(timeoutMs, 'runUntilDone'); // -1: no deadline
    const deadline = ms < 0 ? Infinity : Date.now() + ms;
    const resumeMmioWrites = options.resumeMmioWrites;
    const result: RunResult = { syncs: [], prints: [], printed: [], exits: 0, resumedMmioWrites: 0, conversions: [] };
    for (;;) {
      const left = deadline - Date.now();
      const exit =
        ms < 0
          ? await vcpu.run({ signal: stop, resumeMmioWrites })
          : left > 0
            ? await vcpu.run({ timeoutMs: left, signal: stop, resumeMmioWrites })
            : ({ kind: 'interrupted', deadline: true } as const);
      result.resumedMmioWrites += vcpu.resumedMmioWrites;
      result.exits++;
      if (exit.kind === 'interrupted') {
        // The run's own deadline (a timer of the vCPU thread, never early),
        // or someone else's kick (vcpu.kick(), another vCPU's failure, a signal).
        if (exit.deadline || Date.now() >= deadline) throw new GuestTimeoutError(timeoutMs, vcpu.getRegs().rip);
        throw new UnexpectedExitError(exit, vcpu.getRegs().rip);
      }
      if (exit.kind === 'io' && exit.port === UCALL_PORT && exit.direction === 'out' && exit.size === 4) {
        if (await this.#ucall(vcpu, exit.data, result, options)) return result;
        continue;
      }
      if (await this.#handle(exit, result, options)) continue;
      throw new UnexpectedExitError(exit, vcpu.getRegs().rip);
    }
  }

  // Returns true when the guest said done.
  async #ucall(vcpu: Vcpu, data: Uint8Array, result: RunResult, options: RunUntilDoneOptions): Promise<boolean> {
    const cmd = new DataView(data.buffer, data.byteOffset, 4).getUint32(0, true);
    const regs = vcpu.getRegs();
    switch (cmd) {
      case Ucall.SYNC: {
        const n = Number(regs.rsi);
        result.syncs.push(n);
        await options.onSync?.(n, this, { vcpu, args: [regs.rsi, regs.rcx, regs.rdi, regs.r8, regs.r9] });
        return false;
      }
      case Ucall.PRINT:
        result.prints.push(regs.rsi);
        return false;
      case Ucall.PRINTF: {
        const format = this.#io.formats[Number(regs.rsi)];
        if (format === undefined) break;
        const line = formatGuestPrintf(format, [regs.rcx, regs.rdi, regs.r8, regs.r9]);
        result.printed.push(line);
        options.onPrintf?.(line, this);
        return false;
      }
      case Ucall.ASSERT: {
        const site = this.#site(regs.rcx);
        throw new GuestAssertError(Number(regs.rsi), regs.rip, result.syncs, site?.message);
      }
      case Ucall.ASSERT_CMP: {
        const site = this.#site(regs.rdi);
        if (site?.cmp === undefined) break;
        const { op, actual, expected } = site.cmp;
        const values: GuestAssertValues = { op, actual: regs.rsi, expected: regs.rcx, actualOperand: actual, expectedOperand: expected };
        throw new GuestAssertError(Number(regs.rdi), regs.rip, result.syncs, site.message, values);
      }
      case Ucall.UNHANDLED:
        throw new GuestExceptionError(Number(regs.rsi), regs.rcx, regs.rdi, regs.r8, vcpu.id);
      case Ucall.DONE:
        return true;
    }
    throw new UnexpectedExitError({ kind: 'io', exitReason: ExitReason.IO, direction: 'out', size: 4, port: UCALL_PORT, count: 1, data }, regs.rip);
  }

  // Assert sites are numbered from 1; 0 (or a register holding garbage) is none.
  #site(n: bigint): AssertSite | undefined {
    return n >= 1n && n <= BigInt(this.#io.asserts.length) ? this.#io.asserts[Number(n) - 1] : undefined;
  }

  #longTables(op: string): PageTables {
    if (this.#tables === null) throw rangeError(`${op}: only 64-bit guests have page tables`);
    return this.#tables;
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

  /** Closes the vCPUs, deletes the memslot, closes the guest_memfd. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const v of this.#vcpus) v.close();
    if (!this.vm.closed && !this.memslot.deleted) this.memslot.delete();
    this.guestMemfd?.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function assemble(
  bits: 16 | 64,
  entry: number,
  code: (a: Assembler, io: GuestIo) => void,
  tail?: (a: Assembler) => void,
): { program: AssembleResult; io: GuestIo } {
  const a = new Assembler({ bits, origin: entry });
  const io = new GuestIo(a);
  code(a, io);
  tail?.(a);
  return { program: a.assemble(), io };
}

// Vector -> label, copied from the user's object before anything is built.
function readHandlers(h: unknown): Map<number, string> {
  const out = new Map<number, string>();
  if (h === undefined) return out;
  if (typeof h !== 'object' || h === null) throw argError('exceptionHandlers must be an object of vector -> label', 'ERR_INVALID_ARG_TYPE');
  for (const [k, v] of Object.entries(h)) {
    const vector = Number(k);
    if (!Number.isInteger(vector) || vector < 0 || vector >= EXCEPTION_VECTORS)
      throw rangeError(`exceptionHandlers: vector ${k} is not 0..${EXCEPTION_VECTORS - 1}`);
    if (typeof v !== 'string') throw argError(`exceptionHandlers[${k}] must be a label name`, 'ERR_INVALID_ARG_TYPE');
    out.set(vector, v);
  }
  return out;
}

// CPUID, long-mode segments and tables, and the registers of a vCPU entering at rip.
function setUpLongMode(vcpu: Vcpu, vm: Vm, rip: bigint, rsp: bigint, args: readonly bigint[]): void {
  vcpu.setCpuid(vm.supportedCpuid());
  enterLongMode(vcpu);
  vcpu.updateRegs((r) => {
    for (const k of Object.keys(r) as (keyof typeof r)[]) r[k] = 0n;
    r.rip = rip;
    r.rsp = rsp;
    r.rflags = 2n;
  });
  if (args.length > 0) setArgRegs(vcpu, args);
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
    s.idt = { base: BigInt(Layout.IDT), limit: EXCEPTION_VECTORS * 16 - 1 };
    s.cr0 = 0x80050033n; // PG | AM | WP | NE | ET | MP | PE
    s.cr3 = BigInt(Layout.PML4);
    s.cr4 = 0x620n; // OSXMMEXCPT | OSFXSR | PAE
    s.efer = 0x500n; // LMA | LME
  });
}

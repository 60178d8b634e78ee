// A vCPU (KVM_CREATE_VCPU) with its kvm_run page mapped. runSync() runs the
// guest on the calling thread; run() runs it on a thread owned by this vCPU
// and returns a Promise, with a deadline, an AbortSignal and kick() to bring
// it back (the result is then an 'interrupted' exit).
import { ClosedError, VcpuBusyError, withRequest } from '../errors.js';
import { judgePreFault } from '../rules/vcpu.js';
import { Mapping } from './mapping.js';
import { native } from '../binding/native.js';
import { FdResource } from '../binding/resource.js';
import { argError, rangeError, readTimeoutMs, toU64, typeCode, type U64Input } from '../args.js';
import { Cap, errno } from '../binding/uapi.js';
import { decodeExit, ExitReason, type VcpuExit } from './vcpu-exit.js';

/**
 * preFaultMemory()'s deadline when none is given. A pre-fault maps pages
 * that exist (tens of microseconds each, milliseconds under TCG); only a
 * kernel retrying one fault for ever comes near it.
 */
export const PRE_FAULT_TIMEOUT_MS = 5000;
import { type CpuidEntry, decodeRegs, decodeSregs, encodeCpuid, encodeRegs, encodeSregs, type Regs, REGS_SIZE, type Sregs, SREGS_SIZE } from './regs.js';

export interface RunOptions {
  /**
   * Kick the guest out after this many milliseconds ('interrupted' exit
   * with `deadline: true`): an integer 1..2^31-1; 0 or absent: no deadline.
   * Anything else is a TypeError (code ERR_INVALID_ARG_TYPE for a
   * non-number, ERR_INVALID_ARG_VALUE for a negative, fractional or too
   * large number). The same in run() and runSync().
   */
  timeoutMs?: number;
  /** Kick the guest out when aborted. */
  signal?: AbortSignal;
  /**
   * run() only: MMIO writes the vCPU's thread completes and resumes from by
   * itself instead of returning them, as a C selftest's vCPU thread does for
   * accesses it only checks (memslot_perf_test's guest writing into a memslot
   * that moved away): `length`-byte writes (1, 2, 4 or 8) that lie inside
   * [gpa, gpa + size). The data written is dropped. Any other exit returns
   * as usual; `resumedMmioWrites` then says how many were resumed. Checked
   * before the run starts (TypeError/RangeError with a code).
   */
  resumeMmioWrites?: { gpa: U64Input; size: U64Input; length: 1 | 2 | 4 | 8 };
}

/**
 * RunOptions.resumeMmioWrites, each field read once and checked (a coded
 * TypeError or RangeError): the same range as bigints, or undefined.
 */
export function readResumeMmioWrites(v: unknown, op: string): { gpa: bigint; size: bigint; length: 1 | 2 | 4 | 8 } | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'object' || v === null) throw argError(`${op}: resumeMmioWrites must be an object, got ${String(v)}`, 'ERR_INVALID_ARG_TYPE');
  const o = v as Record<string, unknown>;
  const gpa = toU64(o.gpa, `${op}: resumeMmioWrites.gpa`);
  const size = toU64(o.size, `${op}: resumeMmioWrites.size`);
  const length = o.length;
  if (length !== 1 && length !== 2 && length !== 4 && length !== 8)
    throw argError(`${op}: resumeMmioWrites.length must be 1, 2, 4 or 8, got ${String(length)}`, typeCode(length, 'number'));
  if (size < BigInt(length) || gpa + size > 1n << 64n)
    throw rangeError(`${op}: resumeMmioWrites [0x${gpa.toString(16)}, +0x${size.toString(16)}) must hold one ${length}-byte write and end by 2^64`);
  return { gpa, size, length };
}

/** What a vCPU needs from its VM. */
export interface VcpuParent {
  readonly fd: number;
  adopt(child: Disposable): void;
  forget(child: Disposable): void;
  checkExtension(cap: number): number;
}

type RunnerHandle = object;

export class Vcpu extends FdResource {
  readonly #vm: VcpuParent;
  readonly #run: Mapping | undefined;
  readonly #runView: DataView | undefined;
  readonly #runSync: ((timeoutMs?: number) => number | undefined) | undefined;
  #runner: RunnerHandle | null = null;
  #running = false;
  #resumed = 0;

  /** @internal Use Vm.createVcpu(). */
  constructor(
    fd: number,
    readonly id: number,
    vm: VcpuParent,
    mmapSize: number,
  ) {
    super(fd, 'Vcpu');
    this.#vm = vm;
    try {
      this.#run = Mapping.vcpuRun(fd, mmapSize);
      this.#runView = this.#run.dataView();
      this.#runSync = native.runSyncBind(fd, this.#runView.buffer as ArrayBuffer);
    } catch (e) {
      // Nothing else was set up: close the fd (and the page, if mapped) so a
      // retry of the same id does not meet EEXIST from a leaked vCPU.
      this.close();
      throw e;
    }
    vm.adopt(this);
  }

  /** True while run() is in flight. */
  get running(): boolean {
    return this.#running;
  }

  // The fd for a vCPU ioctl: refused while run() is in flight, because the
  // kernel would block this thread on vcpu->mutex until the guest exits.
  #idle(op: string): number {
    const fd = this.use(op);
    if (this.#running) throw new VcpuBusyError(this.id, op);
    return fd;
  }

  getRegs(): Regs {
    const b = new Uint8Array(REGS_SIZE);
    native.getRegs(this.#idle('read registers'), b);
    return decodeRegs(b);
  }

  setRegs(regs: Regs): void {
    const b = encodeRegs(regs); // reads the caller's object before the fd is taken
    native.setRegs(this.#idle('set registers'), b);
  }

  /** Reads the registers, lets `f` change them, writes them back. */
  updateRegs(f: (r: Regs) => void): void {
    const r = this.getRegs();
    f(r);
    this.setRegs(r);
  }

  getSregs(): Sregs {
    const b = new Uint8Array(SREGS_SIZE);
    native.getSregs(this.#idle('read special registers'), b);
    return decodeSregs(b);
  }

  setSregs(sregs: Sregs): void {
    const b = encodeSregs(sregs);
    native.setSregs(this.#idle('set special registers'), b);
  }

  updateSregs(f: (s: Sregs) => void): void {
    const s = this.getSregs();
    f(s);
    this.setSregs(s);
  }

  /** KVM_SET_CPUID2. A KVM with hardware checks refuses long mode without it. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    const b = encodeCpuid(entries);
    native.setCpuid2(this.#idle('set CPUID'), b);
  }

  /** The kvm_run page (read-only use: exits are decoded for you). */
  get runPage(): DataView {
    this.use('read kvm_run');
    return this.#runView as DataView;
  }

  /**
   * KVM_RUN on this thread; blocks until the next exit. With timeoutMs > 0
   * the guest is kicked out after that long (exit 'interrupted' with
   * `deadline: true`); 0 or no timeoutMs: no deadline (as in run()).
   */
  runSync(options?: Pick<RunOptions, 'timeoutMs'>): VcpuExit {
    const timeoutMs = readTimeoutMs(options?.timeoutMs, 'runSync');
    this.#idle('run');
    const run = this.#runSync as (timeoutMs?: number) => number | undefined;
    const r = timeoutMs < 0 ? run() : run(timeoutMs);
    return decodeExit(this.#runView as DataView, r ?? 0);
  }

  /**
   * KVM_RUN on this vCPU's own thread; the event loop keeps running
   * meanwhile. The deadline (timeoutMs > 0; 0 or absent: none, as in
   * runSync()) is a timer of that thread: it holds while the event loop is
   * busy and never fires early. To bring the guest out at once, kick().
   */
  async run(options: RunOptions = {}): Promise<VcpuExit> {
    const timeoutMs = readTimeoutMs(options.timeoutMs, 'run');
    const signal = options.signal;
    const resume = readResumeMmioWrites(options.resumeMmioWrites, 'run');
    this.#idle('run');
    this.#resumed = 0;
    if (signal?.aborted) return { kind: 'interrupted', exitReason: ExitReason.INTR, deadline: false };
    this.#runner ??= native.runnerCreate(this.fd, (this.#runView as DataView).buffer as ArrayBuffer) as RunnerHandle;
    const runner = this.#runner;
    const kick = (): void => native.runnerKick(runner);
    const pending =
      resume === undefined
        ? native.runnerRun(runner, timeoutMs)
        : native.runnerRun(runner, timeoutMs, resume.gpa, resume.gpa + resume.size - 1n, resume.length);
    this.#running = true;
    signal?.addEventListener('abort', kick, { once: true });
    try {
      const r = await pending;
      if (resume !== undefined) this.#resumed = native.runnerResumed(runner);
      // close() during the run kicked the guest and unmapped kvm_run.
      if (this.closed) throw new ClosedError('Vcpu', 'finish a run: the vCPU was closed while running');
      return decodeExit(this.#runView as DataView, r);
    } finally {
      this.#running = false;
      signal?.removeEventListener('abort', kick);
    }
  }

  /** How many MMIO writes the last run() resumed on the vCPU's thread (RunOptions.resumeMmioWrites). */
  get resumedMmioWrites(): number {
    return this.#resumed;
  }

  /** Makes an in-flight run() return an 'interrupted' exit now (no-op when idle). */
  kick(): void {
    if (this.#runner !== null && this.#running) native.runnerKick(this.#runner);
  }

  /**
   * KVM_PRE_FAULT_MEMORY: maps [gpa, gpa + size) into the guest's page
   * tables ahead of time. Partial progress returns the remainder. Bounded by
   * `timeoutMs` (default PRE_FAULT_TIMEOUT_MS; 0: none): a kernel that
   * retries a fault without end (seen on 6.12) would otherwise hold this
   * thread for good.
   */
  preFaultMemory(range: { gpa: U64Input; size: U64Input }, options?: { timeoutMs?: number }): { gpa: bigint; size: bigint } {
    const gpa = toU64(range.gpa, 'preFaultMemory: gpa');
    const size = toU64(range.size, 'preFaultMemory: size');
    const given = options?.timeoutMs;
    const timeoutMs = given === undefined ? PRE_FAULT_TIMEOUT_MS : Math.max(0, readTimeoutMs(given, 'preFaultMemory'));
    const fd = this.#idle('pre-fault memory');
    judgePreFault({ ioctl: this.#vm.checkExtension(Cap.PRE_FAULT_MEMORY) > 0 }, { gpa, size });
    const r = withRequest(
      { gpa, size, flags: 0 },
      () => native.preFaultMemory(fd, gpa, size, 0, timeoutMs),
      (e) =>
        e === errno.ETIME
          ? [
              `no progress within ${timeoutMs} ms: the kernel kept retrying the first page's fault (kvm_tdp_map_page() loops while the fault answers RET_PF_RETRY and leaves only on a signal; Linux 6.12 can retry without end), so the package's deadline interrupted it; nothing was mapped`,
            ]
          : [],
    );
    return { gpa: BigInt(r.gpa), size: BigInt(r.size) };
  }

  // The runner thread is stopped (kicking a running guest) before the fd
  // and the kvm_run mapping go away.
  protected override beforeClose(): void {
    if (this.#runner !== null) native.runnerDestroy(this.#runner);
    this.#runner = null;
    if (this.#runSync !== undefined) native.runSyncUnbind(this.#runSync);
    this.#run?.unmap();
    this.#vm.forget(this);
  }
}

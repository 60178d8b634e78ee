// A vCPU (KVM_CREATE_VCPU) with its kvm_run page mapped. runSync() runs the
// guest on the calling thread; run() runs it on a thread owned by this vCPU
// and returns a Promise, with a deadline, an AbortSignal and kick() to bring
// it back (the result is then an 'interrupted' exit).
import { ClosedError, MissingCapabilityError, withRequest } from './errors.js';
import { Mapping } from './mapping.js';
import { native } from './native.js';
import { FdResource } from './resource.js';
import { toU64, type U64Input } from './util/args.js';
import { Cap, CapSince } from './uapi.js';
import { decodeExit, type VcpuExit } from './vcpu-exit.js';
import {
  type CpuidEntry, decodeRegs, decodeSregs, encodeCpuid, encodeRegs, encodeSregs, type Regs, REGS_SIZE, type Sregs, SREGS_SIZE,
} from './x86/regs.js';

export interface RunOptions {
  /** Kick the guest out after this many milliseconds ('interrupted' exit). */
  timeoutMs?: number;
  /** Kick the guest out when aborted. */
  signal?: AbortSignal;
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
  readonly #run: Mapping;
  readonly #runView: DataView;
  readonly #runSync: (timeoutMs?: number) => number | undefined;
  #runner: RunnerHandle | null = null;
  #running = false;

  /** @internal Use Vm.createVcpu(). */
  constructor(fd: number, readonly id: number, private readonly vm: VcpuParent, mmapSize: number) {
    super(fd, 'Vcpu');
    try {
      this.#run = Mapping.sharedFile(fd, mmapSize, 0);
    } catch (e) {
      super.close();
      throw e;
    }
    this.#runView = this.#run.dataView();
    this.#runSync = native.runSyncBind(fd, this.#runView.buffer as ArrayBuffer);
    vm.adopt(this);
  }

  /** True while run() is in flight. */
  get running(): boolean {
    return this.#running;
  }

  getRegs(): Regs {
    const b = new Uint8Array(REGS_SIZE);
    native.getRegs(this.use('read registers'), b);
    return decodeRegs(b);
  }

  setRegs(regs: Regs): void {
    native.setRegs(this.use('set registers'), encodeRegs(regs));
  }

  /** Reads the registers, lets `f` change them, writes them back. */
  updateRegs(f: (r: Regs) => void): void {
    const r = this.getRegs();
    f(r);
    this.setRegs(r);
  }

  getSregs(): Sregs {
    const b = new Uint8Array(SREGS_SIZE);
    native.getSregs(this.use('read special registers'), b);
    return decodeSregs(b);
  }

  setSregs(sregs: Sregs): void {
    native.setSregs(this.use('set special registers'), encodeSregs(sregs));
  }

  updateSregs(f: (s: Sregs) => void): void {
    const s = this.getSregs();
    f(s);
    this.setSregs(s);
  }

  /** KVM_SET_CPUID2. A KVM with hardware checks refuses long mode without it. */
  setCpuid(entries: readonly CpuidEntry[]): void {
    native.setCpuid2(this.use('set CPUID'), encodeCpuid(entries));
  }

  /** The kvm_run page (read-only use: exits are decoded for you). */
  get runPage(): DataView {
    this.use('read kvm_run');
    return this.#runView;
  }

  /**
   * KVM_RUN on this thread; blocks until the next exit. With timeoutMs the
   * guest is kicked out after that long (exit 'interrupted').
   */
  runSync(options?: { timeoutMs?: number }): VcpuExit {
    this.use('run');
    if (this.#running) throw new Error(`vCPU ${this.id} is already running (run() in flight)`);
    const timeoutMs = options?.timeoutMs;
    const r = timeoutMs === undefined ? this.#runSync() : this.#runSync(timeoutMs);
    return decodeExit(this.#runView, r ?? 0);
  }

  /** KVM_RUN on this vCPU's own thread; the event loop keeps running meanwhile. */
  async run(options: RunOptions = {}): Promise<VcpuExit> {
    this.use('run');
    if (this.#running) throw new Error(`vCPU ${this.id} is already running`);
    if (options.signal?.aborted) return { kind: 'interrupted' };
    this.#runner ??= native.runnerCreate(this.fd, this.#runView.buffer as ArrayBuffer) as RunnerHandle;
    const runner = this.#runner;
    const kick = (): void => native.runnerKick(runner);
    const timer = options.timeoutMs !== undefined ? setTimeout(kick, options.timeoutMs) : undefined;
    options.signal?.addEventListener('abort', kick, { once: true });
    this.#running = true;
    try {
      const r = await native.runnerRun(runner);
      // close() during the run kicked the guest and unmapped kvm_run.
      if (this.closed) throw new ClosedError('Vcpu', 'finish a run: the vCPU was closed while running');
      return decodeExit(this.#runView, r);
    } finally {
      this.#running = false;
      if (timer !== undefined) clearTimeout(timer);
      options.signal?.removeEventListener('abort', kick);
    }
  }

  /** Makes an in-flight run() return an 'interrupted' exit now (no-op when idle). */
  kick(): void {
    if (this.#runner !== null && this.#running) native.runnerKick(this.#runner);
  }

  /**
   * KVM_PRE_FAULT_MEMORY: maps [gpa, gpa + size) into the guest's page
   * tables ahead of time. Partial progress returns the remainder.
   */
  preFaultMemory(range: { gpa: U64Input; size: U64Input }): { gpa: bigint; size: bigint } {
    const fd = this.use('pre-fault memory');
    if (this.vm.checkExtension(Cap.PRE_FAULT_MEMORY) <= 0) throw new MissingCapabilityError('KVM_CAP_PRE_FAULT_MEMORY', CapSince.PRE_FAULT_MEMORY, 'KVM_PRE_FAULT_MEMORY');
    const gpa = toU64(range.gpa, 'preFaultMemory: gpa');
    const size = toU64(range.size, 'preFaultMemory: size');
    const r = withRequest({ gpa, size, flags: 0 }, () => native.preFaultMemory(fd, gpa, size, 0));
    return { gpa: BigInt(r.gpa), size: BigInt(r.size) };
  }

  // The runner thread is stopped (kicking a running guest) before the fd
  // and the kvm_run mapping go away.
  protected override beforeClose(): void {
    if (this.#runner !== null) native.runnerDestroy(this.#runner);
    this.#runner = null;
    native.runSyncUnbind(this.#runSync);
    this.#run.unmap();
    this.vm.forget(this);
  }
}

// Decoding struct kvm_run after KVM_RUN into a discriminated union.
// Offsets are from include/uapi/linux/kvm.h (the exit union starts at 32).
// Views returned here (IO data, MMIO data) point into the kvm_run page:
// writing them before the next run completes an IN or an MMIO read.

export const ExitReason = {
  UNKNOWN: 0, EXCEPTION: 1, IO: 2, HYPERCALL: 3, DEBUG: 4, HLT: 5, MMIO: 6, IRQ_WINDOW_OPEN: 7, SHUTDOWN: 8,
  FAIL_ENTRY: 9, INTR: 10, INTERNAL_ERROR: 17, SYSTEM_EVENT: 24, X86_RDMSR: 29, X86_WRMSR: 30, MEMORY_FAULT: 39,
} as const;

export const KVM_MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;

export interface IoExit {
  kind: 'io';
  direction: 'in' | 'out';
  /** Bytes per access (1, 2 or 4). */
  size: number;
  port: number;
  count: number;
  /** size * count bytes in the kvm_run page: read for OUT, write for IN. */
  data: Uint8Array;
}

export interface MmioExit {
  kind: 'mmio';
  address: bigint;
  length: number;
  isWrite: boolean;
  /** `length` bytes in the kvm_run page: read for writes, fill for reads. */
  data: Uint8Array;
}

export interface HypercallExit {
  kind: 'hypercall';
  nr: bigint;
  args: bigint[];
  longmode: boolean;
  /** Written into kvm_run; KVM copies it into the guest's RAX on the next run. */
  ret: bigint;
}

export interface MemoryFaultExit {
  kind: 'memory-fault';
  gpa: bigint;
  size: bigint;
  private: boolean;
  flags: bigint;
  /** EFAULT, or EHWPOISON for a poisoned page. */
  errno: number;
}

export type VcpuExit =
  | IoExit
  | MmioExit
  | HypercallExit
  | MemoryFaultExit
  | { kind: 'hlt' }
  | { kind: 'shutdown' }
  | { kind: 'interrupted' }
  | { kind: 'fail-entry'; hardwareEntryFailureReason: bigint; cpu: number }
  | { kind: 'internal-error'; suberror: number; data: bigint[] }
  | { kind: 'system-event'; type: number; data: bigint[] }
  | { kind: 'other'; exitReason: number };

// An IO exit whose data view is made on first use: most exits on hot paths
// never look at the bytes, and a typed array over the kvm_run page costs
// more to create than the rest of the decode.
class IoExitView implements IoExit {
  readonly kind = 'io';
  readonly direction: 'in' | 'out';
  readonly port: number;
  readonly #run: DataView;
  #data: Uint8Array | undefined;
  constructor(run: DataView, readonly size: number, readonly count: number) {
    this.#run = run;
    this.direction = run.getUint8(32) === 0 ? 'in' : 'out';
    this.port = run.getUint16(34, true);
  }

  get data(): Uint8Array {
    const run = this.#run;
    this.#data ??= new Uint8Array(run.buffer, run.byteOffset + Number(run.getBigUint64(40, true)), this.size * this.count);
    return this.#data;
  }

  toJSON(): object {
    return { kind: this.kind, direction: this.direction, size: this.size, port: this.port, count: this.count, data: [...this.data] };
  }
}

function words(v: DataView, count: number, max: number): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < Math.min(count, max); i++) out.push(v.getBigUint64(40 + i * 8, true));
  return out;
}

/** Decodes the exit in `run` (a DataView of the kvm_run page); `r` is the native run result. */
export function decodeExit(run: DataView, r: number): VcpuExit {
  if (r === -4 /* EINTR */) return { kind: 'interrupted' };
  const reason = run.getUint32(8, true);
  switch (reason) {
    case ExitReason.IO: {
      const size = run.getUint8(33);
      const count = run.getUint32(36, true);
      return new IoExitView(run, size, count);
    }
    case ExitReason.MMIO: {
      const length = run.getUint32(48, true);
      return { kind: 'mmio', address: run.getBigUint64(32, true), length, isWrite: run.getUint8(52) !== 0, data: new Uint8Array(run.buffer, run.byteOffset + 40, Math.min(length, 8)) };
    }
    case ExitReason.HYPERCALL:
      return hypercallExit(run);
    case ExitReason.MEMORY_FAULT: {
      const flags = run.getBigUint64(32, true);
      return { kind: 'memory-fault', flags, gpa: run.getBigUint64(40, true), size: run.getBigUint64(48, true), private: (flags & KVM_MEMORY_EXIT_FLAG_PRIVATE) !== 0n, errno: -r || 14 };
    }
    case ExitReason.HLT: return { kind: 'hlt' };
    case ExitReason.SHUTDOWN: return { kind: 'shutdown' };
    case ExitReason.INTR: return { kind: 'interrupted' };
    case ExitReason.FAIL_ENTRY: return { kind: 'fail-entry', hardwareEntryFailureReason: run.getBigUint64(32, true), cpu: run.getUint32(40, true) };
    case ExitReason.INTERNAL_ERROR: return { kind: 'internal-error', suberror: run.getUint32(32, true), data: words(run, run.getUint32(36, true), 16) };
    case ExitReason.SYSTEM_EVENT: return { kind: 'system-event', type: run.getUint32(32, true), data: words(run, run.getUint32(36, true), 16) };
    default: return { kind: 'other', exitReason: reason };
  }
}

function hypercallExit(run: DataView): HypercallExit {
  const args: bigint[] = [];
  for (let i = 0; i < 6; i++) args.push(run.getBigUint64(40 + i * 8, true));
  return {
    kind: 'hypercall',
    nr: run.getBigUint64(32, true),
    args,
    longmode: run.getUint32(96, true) !== 0,
    get ret(): bigint {
      return run.getBigUint64(88, true);
    },
    set ret(v: bigint) {
      run.setBigUint64(88, BigInt.asUintN(64, v), true);
    },
  };
}

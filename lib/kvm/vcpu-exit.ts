// Decoding struct kvm_run after KVM_RUN into a discriminated union.
// Every offset is a name from lib/binding/kvm-run.ts (pinned to the C struct
// by static_asserts in native/uapi.h and a test against the addon).
// Views returned here (IO data, MMIO data) point into the kvm_run page:
// writing them before the next run completes an IN or an MMIO read.
import { KvmRun, KvmRunLengths } from '../binding/kvm-run.js';
import { errno } from '../binding/uapi.js';

export const ExitReason = {
  UNKNOWN: 0,
  EXCEPTION: 1,
  IO: 2,
  HYPERCALL: 3,
  DEBUG: 4,
  HLT: 5,
  MMIO: 6,
  IRQ_WINDOW_OPEN: 7,
  SHUTDOWN: 8,
  FAIL_ENTRY: 9,
  INTR: 10,
  INTERNAL_ERROR: 17,
  SYSTEM_EVENT: 24,
  X86_RDMSR: 29,
  X86_WRMSR: 30,
  MEMORY_FAULT: 39,
} as const;

export const KVM_MEMORY_EXIT_FLAG_PRIVATE = 1n << 3n;

/** kvm_run.internal.suberror of a KVM_EXIT_INTERNAL_ERROR (include/uapi/linux/kvm.h). */
export const InternalErrorSuberror = {
  EMULATION: 1,
  SIMUL_EX: 2,
  DELIVERY_EV: 3,
  UNEXPECTED_EXIT_REASON: 4,
} as const;

export interface IoExit {
  kind: 'io';
  exitReason: number;
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
  exitReason: number;
  address: bigint;
  length: number;
  isWrite: boolean;
  /** `length` bytes in the kvm_run page: read for writes, fill for reads. */
  data: Uint8Array;
}

export interface HypercallExit {
  kind: 'hypercall';
  exitReason: number;
  nr: bigint;
  args: bigint[];
  longmode: boolean;
  /** Written into kvm_run; KVM copies it into the guest's RAX on the next run. */
  ret: bigint;
}

export interface MemoryFaultExit {
  kind: 'memory-fault';
  exitReason: number;
  gpa: bigint;
  size: bigint;
  private: boolean;
  flags: bigint;
  /** EFAULT, or EHWPOISON for a poisoned page. */
  errno: number;
}

/**
 * A decoded exit. Every kind carries `exitReason`, kvm_run.exit_reason as the
 * kernel wrote it (ExitReason.*); an interrupted run is KVM_EXIT_INTR.
 */
export type VcpuExit =
  | IoExit
  | MmioExit
  | HypercallExit
  | MemoryFaultExit
  | { kind: 'hlt'; exitReason: number }
  | { kind: 'shutdown'; exitReason: number }
  /** Kicked out of the guest: by the run's own deadline (`deadline`), kick(), an abort or a signal. */
  | { kind: 'interrupted'; exitReason: number; deadline: boolean }
  | { kind: 'fail-entry'; exitReason: number; hardwareEntryFailureReason: bigint; cpu: number }
  /** suberror: InternalErrorSuberror.*; data: the first ndata words. */
  | { kind: 'internal-error'; exitReason: number; suberror: number; data: bigint[] }
  | { kind: 'system-event'; exitReason: number; type: number; data: bigint[] }
  | { kind: 'other'; exitReason: number };

// An IO exit whose data view is made on first use: most exits on hot paths
// never look at the bytes, and a typed array over the kvm_run page costs
// more to create than the rest of the decode.
class IoExitView implements IoExit {
  readonly kind = 'io';
  readonly exitReason = ExitReason.IO;
  readonly direction: 'in' | 'out';
  readonly port: number;
  readonly #run: DataView;
  #data: Uint8Array | undefined;
  constructor(
    run: DataView,
    readonly size: number,
    readonly count: number,
  ) {
    this.#run = run;
    this.direction = run.getUint8(KvmRun.io.direction) === 0 ? 'in' : 'out';
    this.port = run.getUint16(KvmRun.io.port, true);
  }

  get data(): Uint8Array {
    const run = this.#run;
    this.#data ??= new Uint8Array(run.buffer, run.byteOffset + Number(run.getBigUint64(KvmRun.io.dataOffset, true)), this.size * this.count);
    return this.#data;
  }

  toJSON(): object {
    return {
      kind: this.kind,
      exitReason: this.exitReason,
      direction: this.direction,
      size: this.size,
      port: this.port,
      count: this.count,
      data: [...this.data],
    };
  }
}

// The first min(count, max) u64s of the array at `offset`.
function words(v: DataView, offset: number, count: number, max: number): bigint[] {
  const out: bigint[] = [];
  for (let i = 0; i < Math.min(count, max); i++) out.push(v.getBigUint64(offset + i * 8, true));
  return out;
}

/** Decodes the exit in `run` (a DataView of the kvm_run page); `r` is the native run result. */
export function decodeExit(run: DataView, r: number): VcpuExit {
  if (r === -errno.EINTR) return { kind: 'interrupted', exitReason: ExitReason.INTR, deadline: false };
  if (r === -errno.ETIME) return { kind: 'interrupted', exitReason: ExitReason.INTR, deadline: true }; // the native layer's own deadline
  const reason = run.getUint32(KvmRun.exitReason, true);
  switch (reason) {
    case ExitReason.IO: {
      const size = run.getUint8(KvmRun.io.size);
      const count = run.getUint32(KvmRun.io.count, true);
      return new IoExitView(run, size, count);
    }
    case ExitReason.MMIO: {
      const m = KvmRun.mmio;
      const length = run.getUint32(m.len, true);
      return {
        kind: 'mmio',
        exitReason: reason,
        address: run.getBigUint64(m.physAddr, true),
        length,
        isWrite: run.getUint8(m.isWrite) !== 0,
        data: new Uint8Array(run.buffer, run.byteOffset + m.data, Math.min(length, KvmRunLengths.mmioData)),
      };
    }
    case ExitReason.HYPERCALL:
      return hypercallExit(run);
    case ExitReason.MEMORY_FAULT: {
      const f = KvmRun.memoryFault;
      const flags = run.getBigUint64(f.flags, true);
      return {
        kind: 'memory-fault',
        exitReason: reason,
        flags,
        gpa: run.getBigUint64(f.gpa, true),
        size: run.getBigUint64(f.size, true),
        private: (flags & KVM_MEMORY_EXIT_FLAG_PRIVATE) !== 0n,
        errno: -r || errno.EFAULT,
      };
    }
    case ExitReason.HLT:
      return { kind: 'hlt', exitReason: reason };
    case ExitReason.SHUTDOWN:
      return { kind: 'shutdown', exitReason: reason };
    case ExitReason.INTR:
      return { kind: 'interrupted', exitReason: reason, deadline: false };
    case ExitReason.FAIL_ENTRY: {
      const f = KvmRun.failEntry;
      return {
        kind: 'fail-entry',
        exitReason: reason,
        hardwareEntryFailureReason: run.getBigUint64(f.hardwareEntryFailureReason, true),
        cpu: run.getUint32(f.cpu, true),
      };
    }
    case ExitReason.INTERNAL_ERROR: {
      const f = KvmRun.internal;
      return {
        kind: 'internal-error',
        exitReason: reason,
        suberror: run.getUint32(f.suberror, true),
        data: words(run, f.data, run.getUint32(f.ndata, true), KvmRunLengths.internalData),
      };
    }
    case ExitReason.SYSTEM_EVENT: {
      const f = KvmRun.systemEvent;
      return {
        kind: 'system-event',
        exitReason: reason,
        type: run.getUint32(f.type, true),
        data: words(run, f.data, run.getUint32(f.ndata, true), KvmRunLengths.systemEventData),
      };
    }
    default:
      return { kind: 'other', exitReason: reason };
  }
}

function hypercallExit(run: DataView): HypercallExit {
  const h = KvmRun.hypercall;
  return {
    kind: 'hypercall',
    exitReason: ExitReason.HYPERCALL,
    nr: run.getBigUint64(h.nr, true),
    args: words(run, h.args, KvmRunLengths.hypercallArgs, KvmRunLengths.hypercallArgs),
    longmode: run.getUint32(h.longmode, true) !== 0,
    get ret(): bigint {
      return run.getBigUint64(h.ret, true);
    },
    set ret(v: bigint) {
      run.setBigUint64(h.ret, BigInt.asUintN(64, v), true);
    },
  };
}

// The JS side of each benchmark: the same syscalls as the C twin
// (c/bench.c), issued through the package's public API.
import { writeFileSync } from 'node:fs';
import { apply, Cap, Guest, IntervalMap, judge, Kvm, type MemslotLimits, MemslotTable, type SlotEntry, type Vm } from './api.js';
import { encodeCpuid, encodeRegs, encodeSregs } from '../../lib/kvm/regs.js';

export interface CaseResult {
  nsPerOp: number;
  /** Curve points [slots, ns] for memslot-scale. */
  points?: [number, number][];
  /** Extra measurements reported beside the ratio. */
  extra?: Record<string, number | [number, number][]>;
}

const now = (): bigint => process.hrtime.bigint();

/**
 * One case set up once: run(n) does n timed iterations and returns ns per
 * iteration, so the runner can alternate short JS and C batches.
 */
export interface Session {
  run(n: number): number | Promise<number>;
  close(): void;
}

/** A Kvm and a VM of `type`; close() closes both, VM first. */
function openVm(type: 'default' | 'sw-protected'): { kvm: Kvm; vm: Vm; close(): void } {
  const kvm = Kvm.open();
  try {
    const vm = kvm.createVm({ type });
    return {
      kvm,
      vm,
      close: () => {
        vm.close();
        kvm.close();
      },
    };
  } catch (e) {
    kvm.close();
    throw e;
  }
}

function withVm<T>(type: 'default' | 'sw-protected', f: (vm: Vm, kvm: Kvm) => T): T {
  const v = openVm(type);
  try {
    return f(v.vm, v.kvm);
  } finally {
    v.close();
  }
}

/** A Kvm + VM that live as long as the session; `run` gets the VM. */
function vmSession(type: 'default' | 'sw-protected', setup: (vm: Vm) => (n: number) => number | Promise<number>): Session {
  const v = openVm(type);
  try {
    return { run: setup(v.vm), close: () => v.close() };
  } catch (e) {
    v.close();
    throw e;
  }
}

/** Times `f` over n iterations as one loop (as the C twin does). */
function loop(n: number, f: () => void): number {
  const t = now();
  for (let i = 0; i < n; i++) f();
  return Number(now() - t) / n;
}

export function checkExtension(): Session {
  return vmSession('default', (vm) => (n) => loop(n, () => vm.checkExtension(Cap.USER_MEMORY2)));
}

/** The batch form: n checks as n/32 calls of checkExtensions(32 caps). */
export function checkExtensionsBatch(): Session {
  return vmSession('default', (vm) => {
    const caps = new Array<number>(32).fill(Cap.USER_MEMORY2);
    return (n) => {
      const calls = Math.max(1, Math.round(n / 32));
      return loop(calls, () => vm.checkExtensions(caps)) / 32; // ns per call / caps per call
    };
  });
}

export function memslotAddDelete(): Session {
  return vmSession('default', (vm) => {
    const g = vm.createGuestMemfd({ size: 2 << 20 });
    return (n) =>
      loop(n, () => {
        vm.addMemslot({ slot: 0, gpa: 0x100000000, size: 2 << 20, guestMemfd: g, backing: { kind: 'none' } }).delete();
      });
  });
}

/** createGuestMemfd (through the private-fd-table helper thread) + close. */
export function gmemCreate(): Session {
  return vmSession('default', (vm) => (n) => loop(n, () => vm.createGuestMemfd({ size: 4096 }).close()));
}

// Adds n 4 KiB guest_memfd memslots. Besides the per-window cost, replays
// the same requests through the rules and table alone (no ioctl) to show
// what the bookkeeping itself costs at each table size.
export function memslotScale(n: number): CaseResult {
  return withVm('default', (vm, kvm) => {
    const g = vm.createGuestMemfd({ size: n * 4096 });
    const points: [number, number][] = [];
    let total = 0n;
    let win = now();
    for (let i = 0; i < n; i++) {
      const t0 = now();
      vm.addMemslot({ gpa: i * 4096, size: 4096, guestMemfd: g, guestMemfdOffset: i * 4096, backing: { kind: 'none' } });
      total += now() - t0;
      if ((i + 1) % 1024 === 0 || i + 1 === n) {
        const t1 = now();
        points.push([i + 1, Number(t1 - win) / ((i % 1024) + 1)]);
        win = now();
      }
    }
    return { nsPerOp: Number(total) / n, points, extra: { bookkeeping: bookkeepingCurve(n, vm, kvm) } };
  });
}

function bookkeepingCurve(n: number, vm: Vm, kvm: Kvm): [number, number][] {
  const caps = vm.capabilities();
  const limits: MemslotLimits = {
    vmId: -1,
    userMemory2: true,
    nrMemslots: caps.nrMemslots,
    addressSpaces: caps.addressSpaces,
    guestMemfd: true,
    readonlyMem: caps.readonlyMem,
    taskSizeMax: kvm.taskSizeMax,
    bindingOverlapErrno: 22,
  };
  const table = new MemslotTable();
  const info = { vmId: -1, size: n * 4096, bindings: new IntervalMap<SlotEntry>(), label: 'bench' };
  const points: [number, number][] = [];
  let win = now();
  for (let i = 0; i < n; i++) {
    const c = judge(limits, table, {
      slot: i,
      flags: 4,
      gpa: BigInt(i * 4096),
      size: 4096n,
      userspaceAddr: 0n,
      guestMemfdOffset: BigInt(i * 4096),
      guestMemfd: { kind: 'guest-memfd', info },
    });
    apply(table, c);
    if ((i + 1) % 1024 === 0 || i + 1 === n) {
      const t1 = now();
      points.push([i + 1, Number(t1 - win) / ((i % 1024) + 1)]);
      win = now();
    }
  }
  return points;
}

/** A 64-bit guest that loops on `out dx, al`: every KVM_RUN is one IO exit. */
function ioGuest(vm: Vm): Guest {
  return Guest.longMode(vm, {
    code: (a) => {
      a.mov('dx', 0x3f8).label('loop').out('dx', 'al').jmp('loop');
    },
  });
}

/** Writes the guest's memory, sregs, regs and CPUID for the C twin to load. */
export function writeGuestImage(path: string): void {
  withVm('default', (vm) => {
    using g = ioGuest(vm);
    const memory = g.memslot.view();
    const cpuid = vm.supportedCpuid();
    const sregs = new Uint8Array(312);
    const regs = new Uint8Array(144);
    // Raw struct bytes through the same encoders the Vcpu uses.
    sregs.set(encodeSregs(g.vcpu.getSregs()));
    regs.set(encodeRegs(g.vcpu.getRegs()));
    const header = new Uint32Array([memory.byteLength, cpuid.length * 40]);
    writeFileSync(path, Buffer.concat([Buffer.from(header.buffer), memory, sregs, regs, encodeCpuid(cpuid)]));
  });
}

export function kvmRunIo(): Session {
  return vmSession('default', (vm) => {
    const g = ioGuest(vm);
    return (n) =>
      loop(n, () => {
        if (g.vcpu.runSync().kind !== 'io') throw new Error('unexpected exit');
      });
  });
}

export function kvmRunIoAsync(): Session {
  return vmSession('default', (vm) => {
    const g = ioGuest(vm);
    return async (n) => {
      const t = now();
      for (let i = 0; i < n; i++) if ((await g.vcpu.run()).kind !== 'io') throw new Error('unexpected exit');
      return Number(now() - t) / n;
    };
  });
}

export function fallocateCase(length: number, punch: boolean): Session {
  return vmSession('default', (vm) => {
    const g = vm.createGuestMemfd({ size: length });
    return (n) => {
      let t = 0n;
      for (let i = 0; i < n; i++) {
        const t0 = now();
        if (punch) g.punchHole(0, length);
        else g.allocate(0, length);
        t += now() - t0;
        // Undo outside the timed region, as the C twin does.
        if (punch) g.allocate(0, length);
        else g.punchHole(0, length);
      }
      return Number(t) / n;
    };
  });
}

export function convertCase(discard: boolean): Session {
  return vmSession('sw-protected', (vm) => {
    const g = vm.createGuestMemfd({ size: 2 << 20 });
    vm.addMemslot({ gpa: 0, size: 2 << 20, guestMemfd: g });
    const range = { gpa: 0x1000, size: 4096 };
    return (n) => {
      let t = 0n;
      for (let i = 0; i < n; i++) {
        const t0 = now();
        vm.convert(range, 'private', { discard });
        vm.convert(range, 'shared', { discard });
        t += now() - t0;
      }
      return Number(t) / n;
    };
  });
}

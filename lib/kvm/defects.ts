// Known kernel defects, each probed on a scratch VM with the raw ioctls (the
// package's own rules would refuse the requests that show them). A probe
// leaves nothing behind: what it binds it deletes, and it closes what it
// opened. The answers are cached per process and device, so asking again
// costs nothing; the checked layer asks defectPresent() when it refuses a
// request the kernel here would have accepted.
//
// Defects known now:
//   gmem-bind-offset-overflow  KVM_SET_USER_MEMORY_REGION2 binds a guest_memfd
//     range that ends past 2^63 (offset + size overflows the signed loff_t in
//     kvm_gmem_bind()'s bound check).
import { realpathSync } from 'node:fs';
import { KvmError, retryOnEintr } from '../errors.js';
import { native } from '../binding/native.js';
import * as raw from '../binding/raw.js';
import { FdResource } from '../binding/resource.js';
import { Cap, MemFlag, VmType, type VmTypeName } from '../binding/uapi.js';

/** The stable id of each known defect. */
export type DefectId = 'gmem-bind-offset-overflow';

/**
 * What the probe found: true (the kernel has the defect), false (it does
 * not), 'not-applicable' (this kernel lacks what the defect is in, e.g. no
 * VM type accepts guest_memfd memslots), 'inconclusive' (the probe could not
 * tell: its control request failed; `detail` says how).
 */
export type DefectPresence = boolean | 'not-applicable' | 'inconclusive';

export interface DefectReport {
  readonly id: DefectId;
  readonly present: DefectPresence;
  /** One sentence: what the kernel does wrong. */
  readonly summary: string;
  /** Kernel releases known to have it, and how that is known (measured or read in the source). */
  readonly affected: string;
  /** Kernel releases known not to have it. */
  readonly notAffected: string;
  /** The kernel function the defect is in, and what it gets wrong. */
  readonly kernelSource: string;
  /** What the probe sent and what this kernel answered. */
  readonly detail: string;
  /** The VM type the probe ran on; null when it did not run. */
  readonly vmType: VmTypeName | null;
}

type DefectInfo = Pick<DefectReport, 'summary' | 'affected' | 'notAffected' | 'kernelSource'>;
type ProbeResult = Pick<DefectReport, 'present' | 'detail'>;

const GMEM_SIZE = 0x4000n; // 4 pages, as the kernel's guest_memfd_test (GM-9)
const OVERFLOW_OFFSET = 0x7ffffffffffff000n; // ALIGN_DOWN(INT64_MAX, 4096)

const info: Record<DefectId, DefectInfo> = {
  'gmem-bind-offset-overflow': {
    summary:
      `KVM_SET_USER_MEMORY_REGION2 with KVM_MEM_GUEST_MEMFD accepts a binding whose guest_memfd_offset + memory_size ` +
      `passes 2^63 (e.g. offset ${hex(OVERFLOW_OFFSET)}, size ${hex(GMEM_SIZE)} on a ${hex(GMEM_SIZE)}-byte file), ` +
      `a range far past the end of the file; the kernel must refuse it with EINVAL`,
    affected:
      'Linux 6.18 (measured: 6.18.44, kvm_pvm); from the source, any kernel whose kvm_gmem_bind() takes the offset as a signed loff_t ' +
      '(mainline guest_memfd.c of the 6.18 era does)',
    notAffected:
      "Debian 6.12.117 and 7.3.4 (measured: EINVAL; the kernel's own 7.3 guest_memfd_test expects it); " + '6.1 and older have no guest_memfd (not applicable)',
    kernelSource:
      'virt/kvm/guest_memfd.c kvm_gmem_bind() (6.18 era): `loff_t offset`, `loff_t size = slot->npages << PAGE_SHIFT`, ' +
      '`if (offset < 0 || !PAGE_ALIGNED(offset) || offset + size > i_size_read(inode)) goto err;`: for an offset in ' +
      '[2^63 - size, 2^63) the sum wraps negative (the kernel builds with -fno-strict-overflow) and passes the bound check, and the ' +
      'slot is bound at file index offset >> PAGE_SHIFT. 6.12.117 computes the same sum in u64 (kvm_gmem_bind(..., u64 offset)), ' +
      '7.3 in uoff_t (kvm_gmem_prepare_memory_region()), so the sum exceeds i_size and the bind fails with EINVAL',
  },
};

/** Every known defect's id, in report order. */
export const KNOWN_DEFECT_IDS: readonly DefectId[] = Object.keys(info) as DefectId[];

function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}

function errorCode(e: unknown): string {
  if (e instanceof KvmError) return e.code;
  return e instanceof Error ? (e.message.split('\n')[0] ?? e.name) : String(e);
}

/** The VM types a probe may use: the software ones (no firmware, no attestation). */
const PROBE_VM_TYPES: readonly VmTypeName[] = ['default', 'sw-protected'];

interface ScratchVm {
  type: VmTypeName;
  fd: raw.RawFd;
}

/**
 * Finds a VM type whose VM fd accepts guest_memfd memslots (USER_MEMORY2 and
 * GUEST_MEMFD on the VM fd) and runs `probe` on a fresh VM of it, or says
 * why it could not.
 */
function onGmemVm(kvmFd: number, probe: (vm: ScratchVm) => ProbeResult): ProbeResult & { vmType: VmTypeName | null } {
  const typeBits = raw.checkExtension(kvmFd, Cap.VM_TYPES);
  const seen: string[] = [];
  let failed = false;
  for (const type of PROBE_VM_TYPES) {
    if (type !== 'default' && (typeBits & (1 << VmType[type])) === 0) continue;
    let fd: raw.RawFd;
    try {
      fd = retryOnEintr(() => raw.createVm(kvmFd, VmType[type]));
    } catch (e) {
      failed = true;
      seen.push(`'${type}': KVM_CREATE_VM failed (${errorCode(e)})`);
      continue;
    }
    try {
      const m2 = raw.checkExtension(fd, Cap.USER_MEMORY2);
      const gmem = raw.checkExtension(fd, Cap.GUEST_MEMFD);
      if (m2 > 0 && gmem > 0) return { ...probe({ type, fd }), vmType: type };
      seen.push(`'${type}': KVM_CAP_USER_MEMORY2 ${m2}, KVM_CAP_GUEST_MEMFD ${gmem}`);
    } finally {
      fd.close();
    }
  }
  const tried = seen.length ? seen.join('; ') : 'none';
  return failed
    ? { present: 'inconclusive', detail: `no VM to probe on: ${tried}`, vmType: null }
    : { present: 'not-applicable', detail: `no VM type accepts guest_memfd memslots (on the VM fd: ${tried})`, vmType: null };
}

/** KVM_SET_USER_MEMORY_REGION2 binding the file at `offset`; null when accepted (and deleted again), else the error code. */
function tryBind(vm: raw.RawFd, gmem: raw.RawFd, offset: bigint): { refused: string | null; deleteFailed?: string } {
  try {
    raw.setUserMemoryRegion2(vm, {
      slot: 0,
      flags: MemFlag.GUEST_MEMFD,
      guestPhysAddr: 0,
      memorySize: GMEM_SIZE,
      userspaceAddr: 0,
      guestMemfdOffset: offset,
      guestMemfd: gmem.fd,
    });
  } catch (e) {
    return { refused: errorCode(e) };
  }
  try {
    raw.setUserMemoryRegion2(vm, { slot: 0, flags: 0, guestPhysAddr: 0, memorySize: 0, userspaceAddr: 0, guestMemfdOffset: 0, guestMemfd: 0 });
    return { refused: null };
  } catch (e) {
    // Closing the VM (the caller does) frees the slot anyway.
    return { refused: null, deleteFailed: errorCode(e) };
  }
}

function probeGmemBindOffsetOverflow(vm: ScratchVm): ProbeResult {
  let gmem: raw.RawFd;
  try {
    gmem = raw.createGuestMemfd(vm.fd, { size: GMEM_SIZE, flags: 0 });
  } catch (e) {
    return { present: 'inconclusive', detail: `KVM_CREATE_GUEST_MEMFD (size ${hex(GMEM_SIZE)}) failed on a '${vm.type}' VM: ${errorCode(e)}` };
  }
  try {
    const sent = `slot 0, gpa 0, size ${hex(GMEM_SIZE)}, userspace_addr 0 on a ${hex(GMEM_SIZE)}-byte guest_memfd of a '${vm.type}' VM`;
    // The control: the same binding at offset 0 must be accepted, or a
    // refusal below says nothing about the bound check.
    const control = tryBind(vm.fd, gmem, 0n);
    if (control.refused !== null) {
      return { present: 'inconclusive', detail: `the control binding (guest_memfd_offset 0, ${sent}) was refused: ${control.refused}` };
    }
    const r = tryBind(vm.fd, gmem, OVERFLOW_OFFSET);
    const what = `guest_memfd_offset ${hex(OVERFLOW_OFFSET)}, ${sent}`;
    if (r.refused === null) {
      const cleanup = r.deleteFailed ? `; deleting it failed (${r.deleteFailed}), closing the VM freed it` : ', then deleted';
      return { present: true, detail: `accepted: ${what}${cleanup}` };
    }
    return { present: false, detail: `refused with ${r.refused}${r.refused === 'EINVAL' ? '' : ' (expected EINVAL)'}: ${what}` };
  } finally {
    gmem.close();
  }
}

const probes: Record<DefectId, (kvmFd: number) => ProbeResult & { vmType: VmTypeName | null }> = {
  'gmem-bind-offset-overflow': (kvmFd) => onGmemVm(kvmFd, probeGmemBindOffsetOverflow),
};

// Per process, per device (its real path): the reports, frozen.
const cache = new Map<string, readonly DefectReport[]>();

function cacheKey(path: string): string {
  try {
    return realpathSync(path);
  } catch {
    return path;
  }
}

/** An open Kvm, or the path of a KVM device (opened only if its answers are not cached yet). */
export type DefectTarget = { readonly path: string } | string;

function withKvmFd<T>(target: DefectTarget, f: (fd: number) => T): T {
  if (typeof target === 'string') {
    using dev = new raw.RawFd(native.openDevice(target));
    return f(dev.fd);
  }
  if (!(target instanceof FdResource)) throw new TypeError('knownDefects: expected a Kvm or a device path');
  return f(FdResource.fdOf(target, 'probe known defects'));
}

function targetPath(target: DefectTarget): string {
  if (typeof target === 'string') return target;
  if (!(target instanceof FdResource) || typeof target.path !== 'string') throw new TypeError('knownDefects: expected a Kvm or a device path');
  return target.path;
}

/**
 * Runs every known-defect probe on scratch VMs of `kvm` (a Kvm, or a device
 * path, default /dev/kvm), once per process and device; later calls return
 * the cached reports without a syscall. Never throws for what the kernel
 * answers (a probe that cannot tell says 'inconclusive'); throws what
 * opening the device throws when given a path, and ClosedError for a closed
 * Kvm whose device was not probed yet.
 */
export function knownDefects(kvm: DefectTarget = '/dev/kvm'): readonly DefectReport[] {
  const key = cacheKey(targetPath(kvm));
  const cached = cache.get(key);
  if (cached) return cached;
  const reports = withKvmFd(kvm, (fd) =>
    KNOWN_DEFECT_IDS.map((id): DefectReport => {
      let result: ProbeResult & { vmType: VmTypeName | null };
      try {
        result = probes[id](fd);
      } catch (e) {
        result = { present: 'inconclusive', detail: `the probe failed: ${errorCode(e)}`, vmType: null };
      }
      return Object.freeze({ id, ...info[id], ...result });
    }),
  );
  const frozen = Object.freeze(reports);
  cache.set(key, frozen);
  return frozen;
}

/** The report of one defect (see knownDefects()). */
export function defectReport(kvm: DefectTarget, id: DefectId): DefectReport {
  if (!Object.hasOwn(info, id)) throw new TypeError(`unknown defect id '${String(id)}' (known: ${KNOWN_DEFECT_IDS.join(', ')})`);
  return knownDefects(kvm).find((d) => d.id === id) as DefectReport;
}

/**
 * True only when the probe showed the defect on this kernel (false for
 * absent, not applicable or inconclusive). One call for the checked layer:
 * `defectPresent(kvm, 'gmem-bind-offset-overflow')`.
 */
export function defectPresent(kvm: DefectTarget, id: DefectId): boolean {
  return defectReport(kvm, id).present === true;
}

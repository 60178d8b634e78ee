// Where the kernels this package runs on answer the same request
// differently, and how the package learns which answer applies. Every
// difference the rules depend on is listed here, with the kernel source it
// comes from; the rules (lib/rules/) take the answer through their limits and
// never look at a kernel version themselves.
//
// Learned from capabilities (KVM_CHECK_EXTENSION on the VM fd), so nothing
// to probe:
//   - KVM_SET_USER_MEMORY_REGION2 exists from 6.8 (KVM_CAP_USER_MEMORY2);
//     before, Vm sends KVM_SET_USER_MEMORY_REGION (v1) with the same rules
//     for memslots without guest_memfd (kvm_main.c __kvm_set_memory_region,
//     6.1: check_memory_region_flags() knows LOG_DIRTY_PAGES|READONLY only).
//   - Which VM types take KVM_MEM_GUEST_MEMFD (KVM_CAP_GUEST_MEMFD on the VM
//     fd): 6.8-6.17 only private-memory types (check_memory_region_flags():
//     kvm_arch_has_private_mem()), so a 6.12 default VM creates a guest_memfd
//     but refuses to bind it; 6.18 and 7.x every VM (IS_ENABLED(
//     CONFIG_KVM_GUEST_MEMFD)).
//   - guest_memfd create flags (KVM_CAP_GUEST_MEMFD_FLAGS on the VM fd):
//     none before 6.18 (kvm_gmem_create(): valid_flags = 0); MMAP and
//     INIT_SHARED from 6.18 on a default VM; on 7.3 a sw-protected VM offers
//     MMAP only (kvm_gmem_get_supported_flags():
//     kvm_arch_supports_gmem_init_shared() is false for private memory).
//   - Address spaces (KVM_CAP_MULTI_ADDRESS_SPACE on the VM fd): 2 on a
//     default x86 VM (SMM), 1 on a sw-protected one.
//
// Learned by a probe on a scratch VM (no capability says it):
//   - The errno for a guest_memfd range already bound to another memslot:
//     EINVAL from 6.8 to 6.18 (virt/kvm/guest_memfd.c kvm_gmem_bind(): the
//     xa_find() hit jumps to err, r = -EINVAL); EEXIST from 7.2
//     (kvm_gmem_bind() sets r = -EEXIST) and on 7.3, where the bind is split
//     into kvm_gmem_prepare_memory_region() (fd, VM, range: EBADF/EINVAL,
//     called from kvm_set_memory_region()) and
//     kvm_gmem_commit_memory_region() (the overlap: EEXIST, called from
//     kvm_set_memslot() after kvm_arch_prepare_memory_region()). Measured:
//     6.12.117 and 6.18 EINVAL, 7.3.4 EEXIST. The probe binds two memslots
//     of one scratch VM to the same page of one guest_memfd and keeps the
//     errno; it runs once per device and VM type, the first time the rules
//     need the answer (only a refused request does), and costs one VM.
//     Without /dev/kvm open (the Kvm was closed) the release decides: 7.2 and
//     later EEXIST, older EINVAL.
//
// Order of checks: on 7.3 the binding overlap comes after
// kvm_arch_prepare_memory_region() (gfn beyond kvm_mmu_max_gfn(), TDX gfn
// aliases: both EINVAL, neither checked by this package), on older kernels
// before it. A request that breaks both gets EINVAL from 7.3 where the rules
// report the binding overlap; every rule the package checks comes before
// both places on every kernel, so no verdict changes.
//
// Known defects (a kernel accepting what it must refuse) are probed by
// ./defects.ts.
import { release } from 'node:os';
import { KvmError, retryOnEintr } from '../errors.js';
import * as raw from '../binding/raw.js';
import { errno, MemFlag, VmType, type VmTypeName } from '../binding/uapi.js';

/** How an answer was learned. */
export type LearnedBy = 'probe' | 'release';

export interface BindingOverlapAnswer {
  /** errno of KVM_SET_USER_MEMORY_REGION2 for a guest_memfd range already bound. */
  errno: number;
  learnedBy: LearnedBy;
  /** What the probe saw, or why it could not run. */
  detail: string;
}

// Per device and VM type, for the life of the process: the kernel cannot
// change under a running process.
const cache = new Map<string, BindingOverlapAnswer>();

/** [major, minor] of a kernel release string such as '7.3.4-amd64'; [0, 0] if unreadable. */
export function releaseVersion(r: string): [number, number] {
  const m = /^(\d+)\.(\d+)/.exec(r);
  return m ? [Number(m[1]), Number(m[2])] : [0, 0];
}

/** The binding-overlap errno a kernel of this release gives (7.2 changed it). */
export function bindingOverlapErrnoOfRelease(r: string): number {
  const [major, minor] = releaseVersion(r);
  return major > 7 || (major === 7 && minor >= 2) ? errno.EEXIST : errno.EINVAL;
}

/**
 * The errno this kernel gives for a guest_memfd range already bound to
 * another memslot, on a VM of `type`. `kvmFd` is an open /dev/kvm (null when
 * none is: the release decides, and the answer is not cached).
 */
export function bindingOverlapErrno(kvmFd: number | null, device: string, type: VmTypeName): BindingOverlapAnswer {
  const key = `${device}\0${type}`;
  const known = cache.get(key);
  if (known !== undefined) return known;
  const fallback = (detail: string): BindingOverlapAnswer => ({ errno: bindingOverlapErrnoOfRelease(release()), learnedBy: 'release', detail });
  if (kvmFd === null) return fallback(`no open ${device} to probe with: decided by the kernel release ${release()}`);
  let answer: BindingOverlapAnswer;
  try {
    answer = probeBindingOverlap(kvmFd, type);
  } catch (e) {
    // Out of fds or memory, or the probe's own setup refused: say so, and
    // let the next request try again.
    return fallback(`the probe could not run (${e instanceof Error ? e.message : String(e)}): decided by the kernel release ${release()}`);
  }
  cache.set(key, answer);
  return answer;
}

// Two memslots of a scratch VM, one page each at different gpas, both on
// page 0 of one guest_memfd: the second is the overlap. Everything is closed
// before returning; the VM goes with its memslots and bindings.
function probeBindingOverlap(kvmFd: number, type: VmTypeName): BindingOverlapAnswer {
  using vm = retryOnEintr(() => raw.createVm(kvmFd, VmType[type]));
  using gmem = raw.createGuestMemfd(vm, { size: 0x2000 });
  const region = (slot: number, gpa: number): raw.RawRegion => ({
    slot,
    flags: MemFlag.GUEST_MEMFD,
    guestPhysAddr: gpa,
    memorySize: 0x1000,
    userspaceAddr: 0,
    guestMemfdOffset: 0,
    guestMemfd: gmem.fd,
  });
  raw.setUserMemoryRegion2(vm, region(0, 0));
  try {
    raw.setUserMemoryRegion2(vm, region(1, 0x1000));
  } catch (e) {
    if (!(e instanceof KvmError)) throw e;
    return { errno: e.errno, learnedBy: 'probe', detail: `a second memslot on page 0 of one guest_memfd (a ${type} VM): ${e.code}` };
  }
  // The kernel bound one page twice: no errno to copy. Keep the release's
  // answer for the rules, and say what happened.
  return {
    errno: bindingOverlapErrnoOfRelease(release()),
    learnedBy: 'release',
    detail: `the kernel ACCEPTED a second memslot on page 0 of one guest_memfd (a ${type} VM); decided by the release`,
  };
}

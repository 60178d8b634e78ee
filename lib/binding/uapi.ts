// Constants from include/uapi/linux/kvm.h and arch/x86/include/uapi/asm/kvm.h,
// with the kernel release that introduced each capability (for errors that
// name what is missing).

export const PAGE_SIZE = 4096;
export const PAGE_SHIFT = 12;
export const KVM_API_VERSION = 12;

export const Cap = {
  NR_MEMSLOTS: 10,
  READONLY_MEM: 81,
  MULTI_ADDRESS_SPACE: 118,
  EXIT_HYPERCALL: 201,
  USER_MEMORY2: 231,
  MEMORY_FAULT_INFO: 232,
  MEMORY_ATTRIBUTES: 233,
  GUEST_MEMFD: 234,
  VM_TYPES: 235,
  PRE_FAULT_MEMORY: 236,
  GUEST_MEMFD_FLAGS: 244,
} as const;
export type CapName = keyof typeof Cap;

/** Kernel release that introduced each capability we depend on. */
export const CapSince: Record<CapName, string> = {
  NR_MEMSLOTS: '2.6.37',
  READONLY_MEM: '3.8',
  MULTI_ADDRESS_SPACE: '4.4',
  EXIT_HYPERCALL: '5.19',
  USER_MEMORY2: '6.8',
  MEMORY_FAULT_INFO: '6.8',
  MEMORY_ATTRIBUTES: '6.8',
  GUEST_MEMFD: '6.8',
  VM_TYPES: '6.8',
  PRE_FAULT_MEMORY: '6.10',
  GUEST_MEMFD_FLAGS: '6.18',
};

export const MemFlag = {
  LOG_DIRTY_PAGES: 1 << 0,
  READONLY: 1 << 1,
  GUEST_MEMFD: 1 << 2,
} as const;
export const MEM_FLAGS_KNOWN = MemFlag.LOG_DIRTY_PAGES | MemFlag.READONLY | MemFlag.GUEST_MEMFD;

export const MemoryAttribute = { PRIVATE: 1 << 3 } as const;

export const GuestMemfdFlag = { MMAP: 1 << 0, INIT_SHARED: 1 << 1 } as const;
export type GuestMemfdFlagName = 'mmap' | 'init-shared';
export const guestMemfdFlagBits: Record<GuestMemfdFlagName, number> = {
  mmap: GuestMemfdFlag.MMAP,
  'init-shared': GuestMemfdFlag.INIT_SHARED,
};
/** The release that added each guest_memfd create flag. */
export const guestMemfdFlagSince: Record<GuestMemfdFlagName, string> = { mmap: '6.18', 'init-shared': '6.18' };

export const VmType = {
  default: 0,
  'sw-protected': 1,
  sev: 2,
  'sev-es': 3,
  snp: 4,
  tdx: 5,
} as const;
export type VmTypeName = keyof typeof VmType;
export const vmTypeNames = Object.keys(VmType) as VmTypeName[];

/** fallocate(2) mode bits (linux/falloc.h); a guest_memfd takes only KEEP_SIZE and PUNCH_HOLE. */
export const Falloc = { KEEP_SIZE: 0x01, PUNCH_HOLE: 0x02, COLLAPSE_RANGE: 0x08, ZERO_RANGE: 0x10, INSERT_RANGE: 0x20, UNSHARE_RANGE: 0x40 } as const;

export const Mmap = {
  PROT_NONE: 0,
  PROT_READ: 1,
  PROT_WRITE: 2,
  PROT_EXEC: 4,
  MAP_SHARED: 0x01,
  MAP_PRIVATE: 0x02,
  MAP_FIXED: 0x10,
  MAP_ANONYMOUS: 0x20,
  MAP_NORESERVE: 0x4000,
  MAP_POPULATE: 0x8000,
  MAP_HUGETLB: 0x40000,
  MADV_NORMAL: 0,
  MADV_RANDOM: 1,
  MADV_SEQUENTIAL: 2,
  MADV_WILLNEED: 3,
  MADV_DONTNEED: 4,
  MADV_FREE: 8,
  MADV_REMOVE: 9,
  MADV_DONTFORK: 10,
  MADV_DOFORK: 11,
  MADV_MERGEABLE: 12,
  MADV_UNMERGEABLE: 13,
  MADV_HUGEPAGE: 14,
  MADV_NOHUGEPAGE: 15,
  MADV_DONTDUMP: 16,
  MADV_DODUMP: 17,
  MADV_WIPEONFORK: 18,
  MADV_KEEPONFORK: 19,
  MADV_COLD: 20,
  MADV_PAGEOUT: 21,
  MADV_POPULATE_READ: 22,
  MADV_POPULATE_WRITE: 23,
  MADV_DONTNEED_LOCKED: 24,
  MADV_COLLAPSE: 25,
  MADV_HWPOISON: 100,
  MADV_SOFT_OFFLINE: 101,
} as const;

/** NUMA memory policies (include/uapi/linux/mempolicy.h): modes, get_mempolicy flags, mbind flags. */
export const Mempolicy = {
  MPOL_DEFAULT: 0,
  MPOL_PREFERRED: 1,
  MPOL_BIND: 2,
  MPOL_INTERLEAVE: 3,
  MPOL_LOCAL: 4,
  MPOL_PREFERRED_MANY: 5,
  MPOL_WEIGHTED_INTERLEAVE: 6,
  MPOL_F_NODE: 1,
  MPOL_F_ADDR: 2,
  MPOL_F_MEMS_ALLOWED: 4,
  MPOL_MF_STRICT: 1,
  MPOL_MF_MOVE: 2,
  MPOL_MF_MOVE_ALL: 4,
} as const;

/** memfd_create(2) flags (include/uapi/linux/memfd.h); MFD_CLOEXEC is always added. */
export const Memfd = { MFD_CLOEXEC: 1, MFD_ALLOW_SEALING: 2, MFD_HUGETLB: 4 } as const;

/** Highest user virtual address + 1 on x86-64 with 4-level paging (TASK_SIZE_MAX). */
export const TASK_SIZE_MAX_4LEVEL = (1n << 47n) - 4096n;
/** With 5-level paging (LA57). */
export const TASK_SIZE_MAX_5LEVEL = (1n << 56n) - 4096n;
/** KVM_MEM_MAX_NR_PAGES: a memslot holds at most 2^31 - 1 pages. */
export const KVM_MEM_MAX_NR_PAGES = 2 ** 31 - 1;
export const U64_MAX = (1n << 64n) - 1n;

export const errno = {
  EPERM: 1,
  ENOENT: 2,
  EINTR: 4,
  EIO: 5,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EEXIST: 17,
  ENODEV: 19,
  EFBIG: 27,
  EINVAL: 22,
  ENOTTY: 25,
  ENOSPC: 28,
  E2BIG: 7,
  ETIME: 62,
  EOPNOTSUPP: 95,
  EHWPOISON: 133,
} as const;

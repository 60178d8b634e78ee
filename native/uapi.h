// KVM uapi definitions this addon needs that the build host's headers may lack.
//
// The system headers on our build machines come from Linux 6.1, which predates
// guest_memfd (6.8), memslots v2 (6.8), memory attributes (6.8), pre-fault
// (6.10) and the guest_memfd create flags (6.18). Each block below is used
// only when <linux/kvm.h> does not already define it, and the static_asserts
// pin the layouts to include/uapi/linux/kvm.h so a typo cannot silently send
// the kernel a misaligned struct.
#pragma once

#include <linux/kvm.h>
#include <linux/types.h>
#include <cstddef>

#ifndef KVM_SET_USER_MEMORY_REGION2
struct kvm_userspace_memory_region2 {
  __u32 slot;
  __u32 flags;
  __u64 guest_phys_addr;
  __u64 memory_size;
  __u64 userspace_addr;
  __u64 guest_memfd_offset;
  __u32 guest_memfd;
  __u32 pad1;
  __u64 pad2[14];
};
#define KVM_SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
#endif

#ifndef KVM_CREATE_GUEST_MEMFD
struct kvm_create_guest_memfd {
  __u64 size;
  __u64 flags;
  __u64 reserved[6];
};
#define KVM_CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct kvm_create_guest_memfd)
#endif

#ifndef KVM_SET_MEMORY_ATTRIBUTES
struct kvm_memory_attributes {
  __u64 address;
  __u64 size;
  __u64 attributes;
  __u64 flags;
};
#define KVM_SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct kvm_memory_attributes)
#endif

#ifndef KVM_PRE_FAULT_MEMORY
struct kvm_pre_fault_memory {
  __u64 gpa;
  __u64 size;
  __u64 flags;
  __u64 padding[5];
};
#define KVM_PRE_FAULT_MEMORY _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory)
#endif

static_assert(sizeof(kvm_userspace_memory_region2) == 160, "region2 size");
static_assert(offsetof(kvm_userspace_memory_region2, flags) == 4, "region2.flags");
static_assert(offsetof(kvm_userspace_memory_region2, guest_phys_addr) == 8, "region2.gpa");
static_assert(offsetof(kvm_userspace_memory_region2, memory_size) == 16, "region2.size");
static_assert(offsetof(kvm_userspace_memory_region2, userspace_addr) == 24, "region2.uaddr");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd_offset) == 32, "region2.gmem_offset");
static_assert(offsetof(kvm_userspace_memory_region2, guest_memfd) == 40, "region2.guest_memfd");
static_assert(offsetof(kvm_userspace_memory_region2, pad1) == 44, "region2.pad1");
static_assert(offsetof(kvm_userspace_memory_region2, pad2) == 48, "region2.pad2");
static_assert(sizeof(kvm_create_guest_memfd) == 64, "create_guest_memfd size");
static_assert(offsetof(kvm_create_guest_memfd, flags) == 8, "create_guest_memfd.flags");
static_assert(sizeof(kvm_memory_attributes) == 32, "memory_attributes size");
static_assert(offsetof(kvm_memory_attributes, attributes) == 16, "memory_attributes.attributes");
static_assert(offsetof(kvm_memory_attributes, flags) == 24, "memory_attributes.flags");
static_assert(sizeof(kvm_pre_fault_memory) == 64, "pre_fault_memory size");
static_assert(offsetof(kvm_pre_fault_memory, flags) == 16, "pre_fault_memory.flags");

// The ioctl numbers themselves, checked against the values in KVM-NOTES so a
// wrong _IOW direction or struct size is a compile error, not an ENOTTY.
static_assert(sizeof(kvm_userspace_memory_region) == 32, "region size");
static_assert(offsetof(kvm_userspace_memory_region, userspace_addr) == 24, "region.uaddr");
static_assert(KVM_SET_USER_MEMORY_REGION == 0x4020ae46, "KVM_SET_USER_MEMORY_REGION");
static_assert(KVM_SET_USER_MEMORY_REGION2 == 0x40a0ae49, "KVM_SET_USER_MEMORY_REGION2");
static_assert(KVM_SET_MEMORY_ATTRIBUTES == 0x4020aed2, "KVM_SET_MEMORY_ATTRIBUTES");
static_assert(KVM_CREATE_GUEST_MEMFD == 0xc040aed4, "KVM_CREATE_GUEST_MEMFD");
static_assert(KVM_PRE_FAULT_MEMORY == 0xc040aed5, "KVM_PRE_FAULT_MEMORY");

// struct kvm_cpuid2 ends in __DECLARE_FLEX_ARRAY, which in C++ (6.1 headers)
// adds a 1-byte empty struct: sizeof is 12 instead of the kernel's 8, so the
// header's KVM_GET_SUPPORTED_CPUID / KVM_SET_CPUID2 numbers encode the wrong
// size and the kernel answers EINVAL. Use our own header and numbers.
struct kvmgmem_cpuid2_header {
  __u32 nent;
  __u32 padding;
};
static_assert(sizeof(kvmgmem_cpuid2_header) == 8, "kvm_cpuid2 header");
static_assert(sizeof(kvm_cpuid_entry2) == 40, "kvm_cpuid_entry2 size");
#define KVMGMEM_GET_SUPPORTED_CPUID _IOWR(KVMIO, 0x05, struct kvmgmem_cpuid2_header)
#define KVMGMEM_SET_CPUID2 _IOW(KVMIO, 0x90, struct kvmgmem_cpuid2_header)
static_assert(KVMGMEM_GET_SUPPORTED_CPUID == 0xc008ae05, "KVM_GET_SUPPORTED_CPUID");
static_assert(KVMGMEM_SET_CPUID2 == 0x4008ae90, "KVM_SET_CPUID2");

// Every other ioctl number this addon uses, pinned to the kernel's values.
static_assert(KVM_GET_API_VERSION == 0xae00, "KVM_GET_API_VERSION");
static_assert(KVM_CREATE_VM == 0xae01, "KVM_CREATE_VM");
static_assert(KVM_CHECK_EXTENSION == 0xae03, "KVM_CHECK_EXTENSION");
static_assert(KVM_GET_VCPU_MMAP_SIZE == 0xae04, "KVM_GET_VCPU_MMAP_SIZE");
static_assert(KVM_CREATE_VCPU == 0xae41, "KVM_CREATE_VCPU");
static_assert(KVM_RUN == 0xae80, "KVM_RUN");
static_assert(KVM_GET_REGS == 0x8090ae81, "KVM_GET_REGS");
static_assert(KVM_SET_REGS == 0x4090ae82, "KVM_SET_REGS");
static_assert(KVM_GET_SREGS == 0x8138ae83, "KVM_GET_SREGS");
static_assert(KVM_SET_SREGS == 0x4138ae84, "KVM_SET_SREGS");
static_assert(KVM_ENABLE_CAP == 0x4068aea3, "KVM_ENABLE_CAP");

// struct kvm_run: every offset lib/kvm/vcpu-exit.ts reads (and the one
// field the native runners write), named as in lib/binding/kvm-run.ts.
// One table gives both the static_asserts below (against the kernel's
// layout) and the addon's kvmRunLayout value (offsetof as compiled), which a
// test compares with the TypeScript names, so the decoder cannot drift from
// the struct. The 6.1 headers predate KVM_EXIT_MEMORY_FAULT (6.8): its
// union member is then our own struct, placed at the start of the exit
// union as the kernel places it.
#ifdef KVM_EXIT_MEMORY_FAULT
#define KVMGMEM_RUN_MEMORY_FAULT(f) offsetof(struct kvm_run, memory_fault.f)
#else
struct kvmgmem_run_memory_fault {
  __u64 flags;
  __u64 gpa;
  __u64 size;
};
#define KVMGMEM_RUN_MEMORY_FAULT(f) (offsetof(struct kvm_run, hw) + offsetof(struct kvmgmem_run_memory_fault, f))
static_assert(sizeof(struct kvmgmem_run_memory_fault) == 24, "memory_fault size");
#endif
#ifndef KVM_EXIT_MEMORY_FAULT
#define KVM_EXIT_MEMORY_FAULT 39
#endif
static_assert(KVM_EXIT_MEMORY_FAULT == 39, "KVM_EXIT_MEMORY_FAULT");
#define KVMGMEM_RUN(f) offsetof(struct kvm_run, f)
#define KVMGMEM_RUN_LEN(f) (sizeof(((struct kvm_run*)nullptr)->f) / sizeof(((struct kvm_run*)nullptr)->f[0]))

// X(name, offsetof as compiled, the kernel's offset)
#define KVMGMEM_KVM_RUN_OFFSETS(X)                                                                     \
  X("immediateExit", KVMGMEM_RUN(immediate_exit), 1)                                                   \
  X("exitReason", KVMGMEM_RUN(exit_reason), 8)                                                         \
  X("io.direction", KVMGMEM_RUN(io.direction), 32)                                                     \
  X("io.size", KVMGMEM_RUN(io.size), 33)                                                               \
  X("io.port", KVMGMEM_RUN(io.port), 34)                                                               \
  X("io.count", KVMGMEM_RUN(io.count), 36)                                                             \
  X("io.dataOffset", KVMGMEM_RUN(io.data_offset), 40)                                                  \
  X("mmio.physAddr", KVMGMEM_RUN(mmio.phys_addr), 32)                                                  \
  X("mmio.data", KVMGMEM_RUN(mmio.data), 40)                                                           \
  X("mmio.len", KVMGMEM_RUN(mmio.len), 48)                                                             \
  X("mmio.isWrite", KVMGMEM_RUN(mmio.is_write), 52)                                                    \
  X("hypercall.nr", KVMGMEM_RUN(hypercall.nr), 32)                                                     \
  X("hypercall.args", KVMGMEM_RUN(hypercall.args), 40)                                                 \
  X("hypercall.ret", KVMGMEM_RUN(hypercall.ret), 88)                                                   \
  X("hypercall.longmode", KVMGMEM_RUN(hypercall.longmode), 96)                                         \
  X("failEntry.hardwareEntryFailureReason", KVMGMEM_RUN(fail_entry.hardware_entry_failure_reason), 32) \
  X("failEntry.cpu", KVMGMEM_RUN(fail_entry.cpu), 40)                                                  \
  X("internal.suberror", KVMGMEM_RUN(internal.suberror), 32)                                           \
  X("internal.ndata", KVMGMEM_RUN(internal.ndata), 36)                                                 \
  X("internal.data", KVMGMEM_RUN(internal.data), 40)                                                   \
  X("systemEvent.type", KVMGMEM_RUN(system_event.type), 32)                                            \
  X("systemEvent.ndata", KVMGMEM_RUN(system_event.ndata), 36)                                          \
  X("systemEvent.data", KVMGMEM_RUN(system_event.data), 40)                                            \
  X("memoryFault.flags", KVMGMEM_RUN_MEMORY_FAULT(flags), 32)                                          \
  X("memoryFault.gpa", KVMGMEM_RUN_MEMORY_FAULT(gpa), 40)                                              \
  X("memoryFault.size", KVMGMEM_RUN_MEMORY_FAULT(size), 48)

// X(name, element count as compiled, the kernel's count)
#define KVMGMEM_KVM_RUN_LENGTHS(X)                       \
  X("mmioData", KVMGMEM_RUN_LEN(mmio.data), 8)           \
  X("hypercallArgs", KVMGMEM_RUN_LEN(hypercall.args), 6) \
  X("internalData", KVMGMEM_RUN_LEN(internal.data), 16)  \
  X("systemEventData", KVMGMEM_RUN_LEN(system_event.data), 16)

#define KVMGMEM_ASSERT_RUN(name, compiled, kernel) static_assert((compiled) == (kernel), "kvm_run." name);
KVMGMEM_KVM_RUN_OFFSETS(KVMGMEM_ASSERT_RUN)
KVMGMEM_KVM_RUN_LENGTHS(KVMGMEM_ASSERT_RUN)
#undef KVMGMEM_ASSERT_RUN
// The exit union is 256 bytes and every member read above lies inside it.
static_assert(offsetof(struct kvm_run, padding) == 32 && sizeof(((struct kvm_run*)nullptr)->padding) == 256, "kvm_run exit union");

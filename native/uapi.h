// KVM uapi definitions this addon needs that the build host's headers may lack.
//
// The system headers on our build machines come from Linux 6.1, which predates
// guest_memfd (6.8), memslots v2 (6.8), memory attributes (6.8), pre-fault
// (6.10) and the guest_memfd create flags (6.18). Each block below is used
// only when <linux/kvm.h> does not already define it, and the static_asserts
// pin the layouts to include/uapi/linux/kvm.h so a typo cannot silently send
// the kernel a misaligned struct.
#pragma once

#include <cstddef>
#include <linux/kvm.h>
#include <linux/types.h>

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
#define KVM_SET_USER_MEMORY_REGION2 \
  _IOW(KVMIO, 0x49, struct kvm_userspace_memory_region2)
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

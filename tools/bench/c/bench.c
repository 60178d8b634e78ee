// C twin of the package's benchmarks (tools/bench): the same syscalls,
// issued directly, so the JS/C ratio shows what the package adds on top.
// Usage: bench CASE ITERATIONS [ARG]; prints one JSON line:
//   {"case": ..., "iterations": N, "ns_per_op": X, "points": [...]}
// or: bench serve CASE [ARG]: sets the case up once, then for each line "N"
// on stdin runs N timed iterations and prints the ns per iteration, so the
// runner can alternate short JS and C batches (pairs measured milliseconds
// apart, which a noisy shared machine needs).
// Carries its own uapi definitions: the build hosts have Linux 6.1 headers.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

struct region2 {
  uint32_t slot, flags;
  uint64_t gpa, size, uaddr, gmem_offset;
  uint32_t gmem, pad1;
  uint64_t pad2[14];
};
struct create_gmem { uint64_t size, flags, reserved[6]; };
struct mem_attrs { uint64_t address, size, attributes, flags; };
#define SET_USER_MEMORY_REGION2 _IOW(KVMIO, 0x49, struct region2)
#define CREATE_GUEST_MEMFD _IOWR(KVMIO, 0xd4, struct create_gmem)
#define SET_MEMORY_ATTRIBUTES _IOW(KVMIO, 0xd2, struct mem_attrs)
#define GET_SUPPORTED_CPUID 0xc008ae05
#define SET_CPUID2 0x4008ae90
#define MEM_GUEST_MEMFD (1u << 2)
#define ATTR_PRIVATE (1ull << 3)

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static void die(const char* what) {
  fprintf(stderr, "bench.c: %s: %s\n", what, strerror(errno));
  exit(2);
}

static int kvm_fd, vm_fd;

static void open_vm(int type) {
  kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm_fd < 0) die("open /dev/kvm");
  vm_fd = ioctl(kvm_fd, KVM_CREATE_VM, type);
  if (vm_fd < 0) die("KVM_CREATE_VM");
}

static int create_gmem(uint64_t size, uint64_t flags) {
  struct create_gmem c = {.size = size, .flags = flags};
  int fd = ioctl(vm_fd, CREATE_GUEST_MEMFD, &c);
  if (fd < 0) die("KVM_CREATE_GUEST_MEMFD");
  return fd;
}

static void set_region(uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size, uint64_t uaddr, uint64_t off, int gmem) {
  struct region2 r = {.slot = slot, .flags = flags, .gpa = gpa, .size = size, .uaddr = uaddr, .gmem_offset = off, .gmem = (uint32_t)gmem};
  if (ioctl(vm_fd, SET_USER_MEMORY_REGION2, &r) < 0) die("KVM_SET_USER_MEMORY_REGION2");
}

static void report(const char* name, long n, uint64_t ns, const char* points) {
  printf("{\"case\":\"%s\",\"iterations\":%ld,\"ns_per_op\":%.2f,\"points\":[%s]}\n", name, n, (double)ns / (double)n, points ? points : "");
}

// A thread that only waits: its existence is the point. In a process with
// one thread the kernel's fdget() skips the file's reference count
// (files_struct not shared); with two it takes and drops it on every ioctl.
// Every Node process has several threads, so this variant shows which part
// of the check-extension gap is that and not the package.
static void* idle_thread(void* arg) {
  (void)arg;
  for (;;) pause();
  return NULL;
}

// Each case: a setup, then run(n) -> total ns for n timed iterations.
static int bench_gmem;

static void check_extension_setup(int threaded) {
  if (threaded) {
    pthread_t t;
    if (pthread_create(&t, NULL, idle_thread, NULL) != 0) die("pthread_create");
  }
  open_vm(0);
}

static uint64_t check_extension_run(long n) {
  uint64_t t = now_ns();
  for (long i = 0; i < n; i++)
    if (ioctl(vm_fd, KVM_CHECK_EXTENSION, 231) < 0) die("KVM_CHECK_EXTENSION");
  return now_ns() - t;
}

static void memslot_add_delete_setup(void) {
  open_vm(0);
  bench_gmem = create_gmem(2 << 20, 0);
}

static uint64_t memslot_add_delete_run(long n) {
  uint64_t t0 = now_ns();
  for (long i = 0; i < n; i++) {
    set_region(0, MEM_GUEST_MEMFD, 0x100000000ull, 2 << 20, 0, 0, bench_gmem);
    set_region(0, MEM_GUEST_MEMFD, 0x100000000ull, 0, 0, 0, bench_gmem);
  }
  return now_ns() - t0;
}

// KVM_CREATE_GUEST_MEMFD of 4 KiB, FD_CLOEXEC set after it (what a C VMM
// does; the package closes that window with a helper thread), then close.
static void gmem_create_setup(void) { open_vm(0); }

static uint64_t gmem_create_run(long n) {
  uint64_t t0 = now_ns();
  for (long i = 0; i < n; i++) {
    int fd = create_gmem(4096, 0);
    if (fcntl(fd, F_SETFD, FD_CLOEXEC) < 0) die("fcntl");
    close(fd);
  }
  return now_ns() - t0;
}

// Adds n 4 KiB guest_memfd slots; reports the mean cost per slot in each
// window of 1024 slots as points [slots, ns].
static void memslot_scale(long n) {
  open_vm(0);
  int g = create_gmem((uint64_t)n * 4096, 0);
  char* pts = malloc(64 * (size_t)(n / 1024 + 2));
  pts[0] = 0;
  uint64_t total = 0, win = now_ns();
  for (long i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    set_region((uint32_t)i, MEM_GUEST_MEMFD, (uint64_t)i * 4096, 4096, 0, (uint64_t)i * 4096, g);
    total += now_ns() - t0;
    if ((i + 1) % 1024 == 0 || i + 1 == n) {
      uint64_t t1 = now_ns();
      long k = (i % 1024) + 1;
      sprintf(pts + strlen(pts), "%s[%ld,%.1f]", pts[0] ? "," : "", i + 1, (double)(t1 - win) / (double)k);
      win = now_ns();
    }
  }
  report("memslot-scale", n, total, pts);
}

// KVM_RUN round trip on an IO exit. The guest image (memory, sregs, regs,
// cpuid) is produced by the JS side so both run the identical guest.
static int run_cpu;
static struct kvm_run* run_page;

static void kvm_run_io_setup(const char* image) {
  FILE* f = fopen(image, "rb");
  if (!f) die("open guest image");
  uint32_t mem_size, cpuid_bytes;
  if (fread(&mem_size, 4, 1, f) != 1 || fread(&cpuid_bytes, 4, 1, f) != 1) die("read image header");
  void* mem = mmap(NULL, mem_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) die("mmap");
  struct kvm_sregs sregs;
  struct kvm_regs regs;
  uint8_t* cpuid = malloc(8 + cpuid_bytes);
  memset(cpuid, 0, 8);
  if (fread(mem, 1, mem_size, f) != mem_size || fread(&sregs, sizeof sregs, 1, f) != 1 || fread(&regs, sizeof regs, 1, f) != 1 ||
      fread(cpuid + 8, 1, cpuid_bytes, f) != cpuid_bytes)
    die("read image");
  fclose(f);
  *(uint32_t*)cpuid = cpuid_bytes / 40;
  open_vm(0);
  set_region(0, 0, 0, mem_size, (uint64_t)(uintptr_t)mem, 0, 0);
  int cpu = ioctl(vm_fd, KVM_CREATE_VCPU, 0);
  if (cpu < 0) die("KVM_CREATE_VCPU");
  int sz = ioctl(kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
  struct kvm_run* run = mmap(NULL, (size_t)sz, PROT_READ | PROT_WRITE, MAP_SHARED, cpu, 0);
  if (run == MAP_FAILED) die("mmap kvm_run");
  if (ioctl(cpu, SET_CPUID2, cpuid) < 0) die("KVM_SET_CPUID2");
  if (ioctl(cpu, KVM_SET_SREGS, &sregs) < 0) die("KVM_SET_SREGS");
  if (ioctl(cpu, KVM_SET_REGS, &regs) < 0) die("KVM_SET_REGS");
  run_cpu = cpu;
  run_page = run;
}

// Timed as a whole loop, as the JS side is: per-call clock reads would cost
// more in JS than in C and blur the ratio.
static uint64_t kvm_run_io_run(long n) {
  uint64_t t0 = now_ns();
  for (long i = 0; i < n; i++) {
    if (ioctl(run_cpu, KVM_RUN, 0) < 0) die("KVM_RUN");
    if (run_page->exit_reason != KVM_EXIT_IO) {
      fprintf(stderr, "bench.c: unexpected exit %u\n", run_page->exit_reason);
      exit(2);
    }
  }
  return now_ns() - t0;
}

static uint64_t falloc_len;
static int falloc_punch;

static void fallocate_setup(uint64_t len, int punch) {
  open_vm(0);
  bench_gmem = create_gmem(len, 0);
  falloc_len = len;
  falloc_punch = punch;
}

static uint64_t fallocate_run(long n) {
  int mode = falloc_punch ? (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) : FALLOC_FL_KEEP_SIZE;
  int undo = falloc_punch ? FALLOC_FL_KEEP_SIZE : (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  uint64_t t = 0;
  for (long i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    if (fallocate(bench_gmem, mode, 0, (off_t)falloc_len) < 0) die("fallocate");
    t += now_ns() - t0;
    // Undo outside the timed region so every iteration does real work.
    if (fallocate(bench_gmem, undo, 0, (off_t)falloc_len) < 0) die("fallocate undo");
  }
  return t;
}

// 4 KiB private <-> shared flips with KVM_SET_MEMORY_ATTRIBUTES; with
// discard, the stale copy is dropped as the package does (punch the
// guest_memfd going shared, MADV_REMOVE the shared page going private).
static void* convert_mem;
static int convert_discard;

static void convert_setup(int discard) {
  open_vm(1 /* KVM_X86_SW_PROTECTED_VM */);
  bench_gmem = create_gmem(2 << 20, 0);
  convert_mem = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (convert_mem == MAP_FAILED) die("mmap");
  set_region(0, MEM_GUEST_MEMFD, 0, 2 << 20, (uint64_t)(uintptr_t)convert_mem, 0, bench_gmem);
  convert_discard = discard;
}

static uint64_t convert_run(long n) {
  uint64_t t = 0;
  for (long i = 0; i < n; i++) {
    uint64_t t0 = now_ns();
    struct mem_attrs a = {.address = 0x1000, .size = 4096, .attributes = ATTR_PRIVATE};
    if (ioctl(vm_fd, SET_MEMORY_ATTRIBUTES, &a) < 0) die("KVM_SET_MEMORY_ATTRIBUTES");
    if (convert_discard && madvise((char*)convert_mem + 0x1000, 4096, MADV_REMOVE) < 0) die("madvise");
    a.attributes = 0;
    if (ioctl(vm_fd, SET_MEMORY_ATTRIBUTES, &a) < 0) die("KVM_SET_MEMORY_ATTRIBUTES");
    if (convert_discard && fallocate(bench_gmem, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0x1000, 4096) < 0) die("fallocate");
    t += now_ns() - t0;
  }
  return t;
}

// Sets up case `c`; returns its run function, or NULL if unknown.
static uint64_t (*setup_case(const char* c, const char* arg))(long) {
  if (!strcmp(c, "check-extension")) return check_extension_setup(0), check_extension_run;
  if (!strcmp(c, "check-extension-mt")) return check_extension_setup(1), check_extension_run;
  if (!strcmp(c, "memslot-add-delete-2m")) return memslot_add_delete_setup(), memslot_add_delete_run;
  if (!strcmp(c, "gmem-create-4k")) return gmem_create_setup(), gmem_create_run;
  if (!strcmp(c, "kvm-run-io")) return kvm_run_io_setup(arg ? arg : "guest.img"), kvm_run_io_run;
  if (!strcmp(c, "punch-4k")) return fallocate_setup(4096, 1), fallocate_run;
  if (!strcmp(c, "punch-2m")) return fallocate_setup(2 << 20, 1), fallocate_run;
  if (!strcmp(c, "allocate-4k")) return fallocate_setup(4096, 0), fallocate_run;
  if (!strcmp(c, "allocate-2m")) return fallocate_setup(2 << 20, 0), fallocate_run;
  if (!strcmp(c, "convert-4k")) return convert_setup(0), convert_run;
  if (!strcmp(c, "convert-4k-discard")) return convert_setup(1), convert_run;
  return NULL;
}

// serve mode: one "N" per line in, one ns-per-iteration per line out.
static int serve(const char* c, const char* arg) {
  uint64_t (*run)(long) = setup_case(c, arg);
  if (!run) {
    fprintf(stderr, "bench.c: unknown case %s\n", c);
    return 2;
  }
  printf("ready\n");
  fflush(stdout);
  long n;
  while (scanf("%ld", &n) == 1 && n > 0) {
    uint64_t ns = run(n);
    printf("%.3f\n", (double)ns / (double)n);
    fflush(stdout);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc >= 3 && !strcmp(argv[1], "serve")) return serve(argv[2], argc > 3 ? argv[3] : NULL);
  if (argc < 3) {
    fprintf(stderr, "usage: bench CASE ITERATIONS [ARG] | bench serve CASE [ARG]\n");
    return 2;
  }
  const char* c = argv[1];
  long n = atol(argv[2]);
  if (!strcmp(c, "memslot-scale")) {
    memslot_scale(n);
    return 0;
  }
  uint64_t (*run)(long) = setup_case(c, argc > 3 ? argv[3] : NULL);
  if (!run) {
    fprintf(stderr, "bench.c: unknown case %s\n", c);
    return 2;
  }
  run(n / 10 > 0 ? n / 10 : 1);  // warm-up
  report(c, n, run(n), NULL);
  return 0;
}

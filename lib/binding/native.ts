// The raw binding, described once. Only lib/ imports this; the public API is
// the classes that wrap it. Every function is one syscall (see native/*.cc).
import { constants as bufferConstants } from 'node:buffer';
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { U64Input } from '../args.js';
import { AddonLoadError, KvmError } from '../errors.js';

export interface FstatResult {
  size: number;
  mode: number;
  blocks: number;
  /** st_blksize: the page size for a guest_memfd (GM-6). */
  blksize: number;
  ino: number;
}

/** A mapping: its handle, its address and the view of its first maxView bytes. */
export interface NativeProbe {
  result: 'ok' | 'SIGBUS' | 'SIGSEGV';
  address: bigint | null;
  done: number;
  data: ArrayBuffer | null;
}

export interface NativeMapping {
  handle: object;
  buffer: ArrayBuffer;
  address: bigint;
}

export interface NativeBinding {
  setErrorFactory(factory: (errno: number, syscall: string) => Error): void;
  /** The longest external ArrayBuffer this Node makes (buffer.constants.MAX_LENGTH). */
  setMaxView(n: number): void;
  // system.cc
  openDevice(path: string): number;
  close(fd: number): void;
  getApiVersion(fd: number): number;
  checkExtension(fd: number, cap: number): number;
  /** checkExtension with the fd carried by the returned function. */
  checkExtensionBind(fd: number): (cap: number) => number;
  /** One KVM_CHECK_EXTENSION per caps[i], answers into out[i]. */
  checkExtensions(fd: number, caps: Int32Array, out: Int32Array): void;
  createVm(fd: number, type: number): number;
  getVcpuMmapSize(fd: number): number;
  getSupportedCpuid(fd: number): Buffer;
  fdCloexec(fd: number): boolean;
  // vm.cc
  /** KVM_SET_USER_MEMORY_REGION (v1): the only memslot ioctl before 6.8. */
  setUserMemoryRegion(vmFd: number, slot: number, flags: number, guestPhysAddr: U64Input, memorySize: U64Input, userspaceAddr: U64Input): void;
  setUserMemoryRegion2(
    vmFd: number,
    slot: number,
    flags: number,
    guestPhysAddr: U64Input,
    memorySize: U64Input,
    userspaceAddr: U64Input,
    guestMemfdOffset: U64Input,
    guestMemfd: number,
  ): void;
  setMemoryAttributes(vmFd: number, address: U64Input, size: U64Input, attributes: U64Input, flags: U64Input): void;
  createGuestMemfd(vmFd: number, size: U64Input, flags: U64Input): number;
  enableCap(fd: number, cap: number, flags: number, args: U64Input[]): void;
  setNrMmuPages(fd: number, pages: U64Input): void;
  // guest_memfd.cc
  fallocate(fd: number, mode: number, offset: U64Input, length: U64Input): void;
  fstat(fd: number): FstatResult;
  // system.cc
  /** read/write (offset ignored) or pread/pwrite; EAGAIN where poll(2) says the fd is not ready. */
  fileIo(op: 'read' | 'write' | 'pread' | 'pwrite', fd: number, buffer: Uint8Array, offset: U64Input): number;
  ftruncate(fd: number, length: U64Input): void;
  // mmap.cc
  /** checkFile: refuse ranges past the end of a regular file and unmappable guest_memfds (SIGBUS). */
  mmap(fd: number, length: U64Input, prot: number, flags: number, offset: U64Input, checkFile: boolean): NativeMapping;
  /** PROT_NONE address space for mmapFixed(). */
  reserve(length: U64Input): NativeMapping;
  /** MAP_FIXED at reservation + at, over none of its live children; unmapping it re-reserves the range. */
  mmapFixed(reservation: object, at: U64Input, length: U64Input, prot: number, flags: number, fd: number, offset: U64Input): NativeMapping;
  /** An ArrayBuffer over [offset, offset + length) of the mapping (length <= maxView). */
  mappingView(handle: object, offset: U64Input, length: U64Input): ArrayBuffer;
  /** Detaches the views given, then unmaps. */
  munmap(handle: object, views: ArrayBuffer[]): void;
  madvise(handle: object, offset: U64Input, length: U64Input, advice: number): void;
  /** Reads (into data) or writes `byte` over the range with SIGBUS/SIGSEGV caught; stops at the first fault. */
  probeMapping(handle: object, offset: U64Input, length: U64Input, write: boolean, byte: number): NativeProbe;
  probeAddress(address: U64Input, length: U64Input, write: boolean, byte: number): NativeProbe;
  mbind(handle: object, offset: U64Input, length: U64Input, mode: number, nodes: number[], flags: number): void;
  /** With a handle: the policy at that address (MPOL_F_ADDR); with null, the calling thread's. */
  getMempolicy(handle: object | null, offset: U64Input, flags: number): { mode: number; nodes: number[] };
  setMempolicy(mode: number, nodes: number[]): void;
  /** move_pages(2) query form: per page its node, or -errno. */
  movePages(handle: object, offset: U64Input, pages: number): number[];
  // system.cc
  /** memfd_create(2), MFD_CLOEXEC always. */
  memfdCreate(name: string, flags: number): number;
  // vcpu.cc
  createVcpu(vmFd: number, id: number): number;
  /**
   * A KVM_RUN function bound to this vCPU and kvm_run page (no argument
   * conversion per call). Returns undefined for an exit, or -EINTR (kicked),
   * -ETIME (its own deadline), -EFAULT / -EHWPOISON (memory fault).
   */
  runSyncBind(vcpuFd: number, run: ArrayBuffer): (timeoutMs?: number) => number | undefined;
  /** Makes a bound KVM_RUN function throw from now on and drops its hold on the page. */
  runSyncUnbind(fn: (timeoutMs?: number) => number | undefined): void;
  runnerCreate(vcpuFd: number, run: ArrayBuffer): unknown;
  /**
   * timeoutMs: -1 none, 0 at once; resolves like the bound runSync function.
   * With first, last (first <= last) and len (1, 2, 4, 8): MMIO writes of len
   * bytes in [first, last] are resumed on the runner's thread.
   */
  runnerRun(runner: unknown, timeoutMs: number, first?: bigint, last?: bigint, len?: number): Promise<number>;
  /** How many MMIO writes the runner's last finished run resumed. */
  runnerResumed(runner: unknown): number;
  runnerKick(runner: unknown): void;
  runnerDestroy(runner: unknown): void;
  getRegs(vcpuFd: number, out: Uint8Array): void;
  setRegs(vcpuFd: number, regs: Uint8Array): void;
  getSregs(vcpuFd: number, out: Uint8Array): void;
  setSregs(vcpuFd: number, sregs: Uint8Array): void;
  setCpuid2(vcpuFd: number, entries: Uint8Array): void;
  preFaultMemory(vcpuFd: number, gpa: U64Input, size: U64Input, flags: U64Input, timeoutMs: number): { gpa: U64Input; size: U64Input };
  withInterrupts<T>(intervalUs: number, fn: () => T): T;
  /**
   * struct kvm_run as the addon was compiled: offsetof of every field
   * lib/binding/kvm-run.ts names (dotted: 'io.port'), the element counts of
   * the arrays read, and sizeof.
   */
  readonly kvmRunLayout: { offsets: Record<string, number>; lengths: Record<string, number>; size: number };
}

// The package root is the nearest folder above this file with a
// package.json: lib/ when run from source (tests), dist/lib/ when built.
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new AddonLoadError(`kvm-gmem: cannot find the package root (no package.json above ${dirname(fileURLToPath(import.meta.url))})`);
    dir = up;
  }
  return dir;
}

function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => NativeBinding;
  // KVM_GMEM_ADDON names another build of the addon to load instead (the
  // sanitized one, tools/asan/run.mjs); a relative path is from the package root.
  const override = process.env.KVM_GMEM_ADDON;
  const binding = override ? (require(resolve(packageRoot(), override)) as NativeBinding) : bindings({ bindings: 'kvm_gmem', module_root: packageRoot() });
  // Every native failure is built by this factory, so errors thrown by the
  // addon are real KvmError instances with code/errno/syscall.
  binding.setErrorFactory((errno, syscall) => new KvmError(errno, syscall));
  binding.setMaxView(bufferConstants.MAX_LENGTH);
  // The addon's exports object gets its ~30 properties one at a time, which
  // leaves V8 holding it as a dictionary: every `native.f(...)` was a hash
  // lookup through the generic load IC (~10-20 ns per call, measured on
  // KVM_CHECK_EXTENSION). A spread copy has a fixed shape, so the JIT
  // inlines the load.
  return { ...binding };
}

export const native: NativeBinding = load();

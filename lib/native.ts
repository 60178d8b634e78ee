// The raw binding, described once. Only lib/ imports this; the public API is
// the classes that wrap it. Every function is one syscall (see native/*.cc).
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { KvmError } from './errors.js';

export type U64 = number | bigint;

export interface FstatResult {
  size: number;
  mode: number;
  blocks: number;
  ino: number;
}

export interface NativeMapping {
  buffer: ArrayBuffer;
  address: bigint;
}

export interface NativeBinding {
  setErrorFactory(factory: (errno: number, syscall: string) => Error): void;
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
  setUserMemoryRegion2(
    vmFd: number, slot: number, flags: number, guestPhysAddr: U64, memorySize: U64,
    userspaceAddr: U64, guestMemfdOffset: U64, guestMemfd: number,
  ): void;
  setMemoryAttributes(vmFd: number, address: U64, size: U64, attributes: U64, flags: U64): void;
  createGuestMemfd(vmFd: number, size: U64, flags: U64): number;
  enableCap(fd: number, cap: number, flags: number, args: U64[]): void;
  // guest_memfd.cc
  fallocate(fd: number, mode: number, offset: U64, length: U64): void;
  fstat(fd: number): FstatResult;
  // mmap.cc
  mmap(fd: number, length: U64, prot: number, flags: number, offset: U64): NativeMapping;
  munmap(buffer: ArrayBuffer): void;
  madvise(buffer: ArrayBuffer, offset: U64, length: U64, advice: number): void;
  // vcpu.cc
  createVcpu(vmFd: number, id: number): number;
  /** 0, or -EINTR / -EFAULT / -EHWPOISON for exits reported as failures. */
  /** A KVM_RUN function bound to this vCPU and kvm_run page (no argument conversion per call). */
  /** Returns undefined for an exit, or -EINTR / -EFAULT / -EHWPOISON. */
  runSyncBind(vcpuFd: number, run: ArrayBuffer): (timeoutMs?: number) => number | undefined;
  /** Makes a bound KVM_RUN function throw from now on and drops its hold on the page. */
  runSyncUnbind(fn: (timeoutMs?: number) => number | undefined): void;
  runnerCreate(vcpuFd: number, run: ArrayBuffer): unknown;
  runnerRun(runner: unknown): Promise<number>;
  runnerKick(runner: unknown): void;
  runnerDestroy(runner: unknown): void;
  getRegs(vcpuFd: number, out: Uint8Array): void;
  setRegs(vcpuFd: number, regs: Uint8Array): void;
  getSregs(vcpuFd: number, out: Uint8Array): void;
  setSregs(vcpuFd: number, sregs: Uint8Array): void;
  setCpuid2(vcpuFd: number, entries: Uint8Array): void;
  preFaultMemory(vcpuFd: number, gpa: U64, size: U64, flags: U64): { gpa: U64; size: U64 };
}

// The package root is the nearest folder above this file with a
// package.json: lib/ when run from source (tests), dist/lib/ when built.
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('kvm-gmem: cannot find the package root');
    dir = up;
  }
  return dir;
}

function load(): NativeBinding {
  const require = createRequire(import.meta.url);
  const bindings = require('bindings') as (opts: { bindings: string; module_root: string }) => NativeBinding;
  const binding = bindings({ bindings: 'kvm_gmem', module_root: packageRoot() });
  // Every native failure is built by this factory, so errors thrown by the
  // addon are real KvmError instances with code/errno/syscall.
  binding.setErrorFactory((errno, syscall) => new KvmError(errno, syscall));
  // The addon's exports object gets its ~30 properties one at a time, which
  // leaves V8 holding it as a dictionary: every `native.f(...)` was a hash
  // lookup through the generic load IC (~10-20 ns per call, measured on
  // KVM_CHECK_EXTENSION). A spread copy has a fixed shape, so the JIT
  // inlines the load.
  return { ...binding };
}

export const native: NativeBinding = load();

// The unchecked layer: each ioctl exactly as the kernel takes it, like the
// selftests' __vm_set_user_memory_region2(). Nothing is judged here, so a
// test can send a bad request on purpose and see the kernel's errno; the
// arguments are still type-checked by the addon, so misuse cannot crash the
// process. Errors are KvmError with every field that was sent.
import { withRequest as call } from '../errors.js';
import { argError, nodeList, type U64Input } from '../args.js';
import { type FstatResult, native } from './native.js';
import { type ProbeAccess, probeArgs, probeResult, type ProbeResult } from './probe.js';
import { FdResource } from './resource.js';

type FdLike = number | { readonly fd: number };

// Every raw call copies its struct's fields before it reads the fd: a getter
// that closes the object (and a new fd that takes its number) must not send
// the ioctl to another object.
function fdOf(f: FdLike): number {
  return typeof f === 'number' ? f : f.fd;
}

/** `o` itself when it is an object (the kernel's struct as named fields), else a coded TypeError. */
function struct<T>(o: T, fn: string): T {
  if (o === null || typeof o !== 'object') throw argError(`${fn}: expected an object of fields, got ${o === null ? 'null' : typeof o}`, 'ERR_INVALID_ARG_TYPE');
  return o;
}

export interface RawRegion {
  slot: number;
  flags: number;
  guestPhysAddr: U64Input;
  memorySize: U64Input;
  userspaceAddr: U64Input;
  guestMemfdOffset: U64Input;
  guestMemfd: number;
}

/** An fd returned by a raw create call; closes on close()/dispose. */
export class RawFd extends FdResource {
  constructor(fd: number) {
    super(fd, 'RawFd');
  }
}

export function setUserMemoryRegion2(vm: FdLike, r: RawRegion): void {
  const { slot, flags, guestPhysAddr, memorySize, userspaceAddr, guestMemfdOffset, guestMemfd } = struct(r, 'raw.setUserMemoryRegion2');
  const fd = fdOf(vm);
  call(
    {
      slot,
      flags,
      guest_phys_addr: guestPhysAddr,
      memory_size: memorySize,
      userspace_addr: userspaceAddr,
      guest_memfd_offset: guestMemfdOffset,
      guest_memfd: guestMemfd,
    },
    () => native.setUserMemoryRegion2(fd, slot, flags, guestPhysAddr, memorySize, userspaceAddr, guestMemfdOffset, guestMemfd),
  );
}

/** KVM_SET_USER_MEMORY_REGION (v1, the selftests' vm_set_user_memory_region()): no guest_memfd fields. */
export function setUserMemoryRegion(vm: FdLike, r: Omit<RawRegion, 'guestMemfdOffset' | 'guestMemfd'>): void {
  const { slot, flags, guestPhysAddr, memorySize, userspaceAddr } = struct(r, 'raw.setUserMemoryRegion');
  const fd = fdOf(vm);
  call({ slot, flags, guest_phys_addr: guestPhysAddr, memory_size: memorySize, userspace_addr: userspaceAddr }, () =>
    native.setUserMemoryRegion(fd, slot, flags, guestPhysAddr, memorySize, userspaceAddr),
  );
}

export function setMemoryAttributes(vm: FdLike, a: { address: U64Input; size: U64Input; attributes: U64Input; flags?: U64Input }): void {
  const { address, size, attributes, flags: f } = struct(a, 'raw.setMemoryAttributes');
  const flags = f ?? 0;
  const fd = fdOf(vm);
  call({ address, size, attributes, flags }, () => native.setMemoryAttributes(fd, address, size, attributes, flags));
}

export function createGuestMemfd(vm: FdLike, c: { size: U64Input; flags?: U64Input }): RawFd {
  const { size, flags: f } = struct(c, 'raw.createGuestMemfd');
  const flags = f ?? 0;
  const fd = fdOf(vm);
  return new RawFd(call({ size, flags }, () => native.createGuestMemfd(fd, size, flags)));
}

export function createVm(kvm: FdLike, type: number): RawFd {
  const fd = fdOf(kvm);
  return new RawFd(call({ type }, () => native.createVm(fd, type)));
}

export function checkExtension(f: FdLike, cap: number): number {
  const fd = fdOf(f);
  return call({ cap }, () => native.checkExtension(fd, cap));
}

export function enableCap(f: FdLike, cap: number, args: U64Input[] = [], flags = 0): void {
  // A copy (its elements read once, here); a non-array goes to the addon, which refuses it.
  const a = Array.isArray(args) ? args.slice() : args;
  const fd = fdOf(f);
  call({ cap, flags, args: Array.isArray(a) ? a.map(String).join(',') : typeof a }, () => native.enableCap(fd, cap, flags, a));
}

/** KVM_SET_NR_MMU_PAGES on a VM fd: the shadow MMU's page budget (set_memory_region_test's vm_set_nr_mmu_pages). */
export function setNrMmuPages(vm: FdLike, pages: U64Input): void {
  const fd = fdOf(vm);
  call({ pages }, () => native.setNrMmuPages(fd, pages));
}

/**
 * Calls `fn` while an interval timer sends this thread a signal every
 * `intervalUs` microseconds (1000..1,000,000: closer, handling the
 * signals alone could take all of the thread's time), and returns what `fn` returns.
 * The signal's handler does nothing, so a syscall that checks for a pending
 * signal stops with EINTR: KVM_CREATE_VM (mm_take_all_locks), fallocate on a
 * guest_memfd (per folio), KVM_RUN (an `interrupted` exit). For tests of
 * EINTR paths; the timer is deleted however `fn` ends.
 */
export function withInterrupts<T>(intervalUs: number, fn: () => T): T {
  return native.withInterrupts(intervalUs, fn);
}

export function fallocate(f: FdLike, mode: number, offset: U64Input, length: U64Input): void {
  const fd = fdOf(f);
  call({ fd, mode, offset, length }, () => native.fallocate(fd, mode, offset, length));
}

export function fstat(f: FdLike): FstatResult {
  const fd = fdOf(f);
  return call({ fd }, () => native.fstat(fd));
}

/**
 * read(2) into `buffer` at the file position; the bytes read. These four
 * are for tests of what a file refuses (guest_memfd refuses all of them);
 * none blocks: an fd that poll(2) reports not ready answers EAGAIN.
 */
export function read(f: FdLike, buffer: Uint8Array): number {
  const fd = fdOf(f);
  return call({ fd, length: buffer?.byteLength }, () => native.fileIo('read', fd, buffer, 0));
}

/** write(2) of `buffer` at the file position; the bytes written (see read()). */
export function write(f: FdLike, buffer: Uint8Array): number {
  const fd = fdOf(f);
  return call({ fd, length: buffer?.byteLength }, () => native.fileIo('write', fd, buffer, 0));
}

/** pread(2) into `buffer` at `offset`; the bytes read (see read()). */
export function pread(f: FdLike, buffer: Uint8Array, offset: U64Input): number {
  const fd = fdOf(f);
  return call({ fd, length: buffer?.byteLength, offset }, () => native.fileIo('pread', fd, buffer, offset));
}

/** pwrite(2) of `buffer` at `offset`; the bytes written (see read()). */
export function pwrite(f: FdLike, buffer: Uint8Array, offset: U64Input): number {
  const fd = fdOf(f);
  return call({ fd, length: buffer?.byteLength, offset }, () => native.fileIo('pwrite', fd, buffer, offset));
}

/** ftruncate(2) (a guest_memfd's size is fixed at create: the kernel refuses). */
export function ftruncate(f: FdLike, length: U64Input): void {
  const fd = fdOf(f);
  call({ fd, length }, () => native.ftruncate(fd, length));
}

/** Whether FD_CLOEXEC is set on `fd`. */
export function isCloexec(f: FdLike): boolean {
  return native.fdCloexec(fdOf(f));
}

/**
 * Reads or writes `byte` over [address, address + length) of this process's
 * memory with SIGBUS and SIGSEGV caught, as Mapping.probe() does on a
 * mapping: the fault comes back as a value. Unchecked: a write lands
 * wherever `address` points, the process's own heap included.
 */
export function probeMemory(address: U64Input, length: U64Input, access: ProbeAccess = 'read', byte = 0): ProbeResult {
  const a = probeArgs(access, byte, 'raw.probeMemory');
  return probeResult(native.probeAddress(address, length, a.write, a.byte));
}

/**
 * memfd_create(2) (always MFD_CLOEXEC): a plain memory file, e.g. the
 * "regular memfd" that KVM refuses as a guest_memfd (set_memory_region_test).
 */
export function memfdCreate(name: string, flags = 0): RawFd {
  return new RawFd(call({ name, flags }, () => native.memfdCreate(name, flags)));
}

/** get_mempolicy(2) of the calling thread (`flags` e.g. Mempolicy.MPOL_F_MEMS_ALLOWED): mode and nodes. */
export function getMempolicy(flags = 0): { mode: number; nodes: number[] } {
  return call({ flags }, () => native.getMempolicy(null, 0, flags));
}

/** set_mempolicy(2) of the calling thread (the JavaScript thread: every later allocation of it). */
export function setMempolicy(mode: number, nodes: readonly number[]): void {
  const n = nodeList(nodes, 'raw.setMempolicy');
  call({ mode, nodes: n.join(',') }, () => native.setMempolicy(mode, n));
}

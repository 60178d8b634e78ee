// Memory probes (Mapping.probe, raw.probeMemory) and unchecked mappings
// (Mapping.unchecked): a SIGBUS or SIGSEGV from touching memory comes back as
// a value and the process goes on, as the kernel selftests'
// TEST_EXPECT_SIGBUS expects; the handlers that were there before (V8's
// among them) are back afterwards. Most of this needs no KVM: anonymous
// memory, PROT_NONE, and a file shorter than its mapping fault the same way
// everywhere. The guest_memfd cases need its 'mmap' create flag.
import { execFileSync } from 'node:child_process';
import { closeSync, constants, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, test } from 'vitest';
import { ClosedError, errno, Kvm, KvmError, Mapping, Memfd, Mempolicy, Mmap, raw } from '../lib/index.js';
import { gate, needs, pickVmType, thrown } from './helpers.js';

const PAGE = 4096;
// (The tsconfig's libs have no WebAssembly types.)
const Wasm = (
  globalThis as unknown as {
    WebAssembly: { Module: new (b: Uint8Array) => object; Instance: new (m: object) => { exports: Record<string, unknown> }; RuntimeError: new () => Error };
  }
).WebAssembly;
const dir = mkdtempSync(join(tmpdir(), 'kvm-gmem-probe-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** An fd on a regular file of `size` bytes. */
function fileOf(size: number): number {
  const fd = openSync(join(dir, `f${size}-${Math.random()}`), 'w+');
  ftruncateSync(fd, size);
  return fd;
}

describe('Mapping.probe on memory that does not fault', () => {
  test('a read copies the bytes; a write fills the range and a view sees it', () => {
    using m = Mapping.anonymousShared(2 * PAGE);
    expect(m.probe(0, 2 * PAGE, 'read')).toEqual({ result: 'ok', address: null, done: 2 * PAGE, data: new Uint8Array(2 * PAGE) });
    expect(m.probe(100, 3000, 'write', 0xaa)).toEqual({ result: 'ok', address: null, done: 3000, data: null });
    const b = m.bytes();
    expect(b[99]).toBe(0);
    expect(b.subarray(100, 3100).every((x) => x === 0xaa)).toBe(true);
    expect(b[3100]).toBe(0);
    expect(m.probe(99, 3, 'read').data).toEqual(new Uint8Array([0, 0xaa, 0xaa]));
    // Defaults: one byte, read.
    expect(m.probe(100)).toEqual({ result: 'ok', address: null, done: 1, data: new Uint8Array([0xaa]) });
  });
});

describe('Mapping.anonymousPrivate', () => {
  test('private anonymous memory with views: MADV_DONTNEED drops what was written (it reads as zero again)', () => {
    using m = Mapping.anonymousPrivate(2 * PAGE);
    const v = m.dataView();
    v.setBigUint64(PAGE + 8, 0x1122334455667788n, true);
    expect(m.probe(PAGE + 8, 1, 'read').data).toEqual(new Uint8Array([0x88]));
    m.advise(PAGE, PAGE, Mmap.MADV_DONTNEED);
    expect(v.getBigUint64(PAGE + 8, true)).toBe(0n);
    // /proc/self/maps names it private ('p'), unlike anonymousShared()'s 's'.
    const line = readFileSync('/proc/self/maps', 'utf8')
      .split('\n')
      .find((l) => l.startsWith(`${m.address.toString(16)}-`));
    expect(line?.split(/\s+/)[1]).toBe('rw-p');
  });
});

describe('faults come back as values', () => {
  test('PROT_NONE: a read is SIGSEGV at the first byte; PROT_READ: a write is SIGSEGV; the process goes on, 200 times over', () => {
    using none = Mapping.unchecked({ length: PAGE, prot: Mmap.PROT_NONE });
    using ro = Mapping.unchecked({ length: PAGE, prot: Mmap.PROT_READ });
    for (let i = 0; i < 100; i++) {
      expect(none.probe(8, 16, 'read')).toEqual({ result: 'SIGSEGV', address: none.address + 8n, done: 0, data: new Uint8Array(0) });
      expect(ro.probe(0, PAGE, 'write', 1)).toEqual({ result: 'SIGSEGV', address: ro.address, done: 0, data: null });
    }
    expect(ro.probe(0, PAGE, 'read').result).toBe('ok');
  });

  test('a file mapping past the end of its file: SIGBUS at the first page past it, the bytes before it written (GM-14)', () => {
    const fd = fileOf(4 * PAGE);
    try {
      using m = Mapping.unchecked({ fd, length: 16 * PAGE });
      const w = m.probe(0, 16 * PAGE, 'write', 0xaa);
      expect(w).toEqual({ result: 'SIGBUS', address: m.address + BigInt(4 * PAGE), done: 4 * PAGE, data: null });
      const r = m.probe(0, 16 * PAGE, 'read');
      expect(r.result).toBe('SIGBUS');
      expect(r.address).toBe(m.address + BigInt(4 * PAGE));
      expect(r.done).toBe(4 * PAGE);
      expect(r.data?.every((x) => x === 0xaa)).toBe(true);
      // The checked constructor refuses the same mapping outright.
      expect(() => Mapping.sharedFile(fd, 16 * PAGE)).toThrow(RangeError);
    } finally {
      closeSync(fd);
    }
  });

  test('raw.probeMemory on any address: a live mapping, the null page, and a wrapping range', () => {
    using m = Mapping.unchecked({ length: 2 * PAGE, prot: Mmap.PROT_READ });
    expect(raw.probeMemory(m.address, 2 * PAGE, 'read').result).toBe('ok');
    expect(raw.probeMemory(m.address + 10n, 1, 'write', 7)).toEqual({ result: 'SIGSEGV', address: m.address + 10n, done: 0, data: null });
    expect(raw.probeMemory(0n, 1, 'read')).toEqual({ result: 'SIGSEGV', address: 0n, done: 0, data: new Uint8Array(0) });
    expect(() => raw.probeMemory(2n ** 64n - 2n, 4, 'read')).toThrow(RangeError);
  });

  test("V8's own fault handling still works after probes: a WebAssembly out-of-bounds load traps as a RuntimeError", () => {
    using m = Mapping.unchecked({ length: PAGE, prot: Mmap.PROT_NONE });
    expect(m.probe(0).result).toBe('SIGSEGV');
    // (module (memory 1) (func (export "f") (result i32) i32.const 70000 i32.load))
    const bytes = new Uint8Array([
      0, 97, 115, 109, 1, 0, 0, 0, 1, 5, 1, 96, 0, 1, 127, 3, 2, 1, 0, 5, 3, 1, 0, 1, 7, 5, 1, 1, 102, 0, 0, 10, 11, 1, 9, 0, 65, 240, 162, 4, 40, 2, 0, 11,
    ]);
    const f = new Wasm.Instance(new Wasm.Module(bytes)).exports.f as () => number;
    expect(() => f()).toThrow(Wasm.RuntimeError);
    expect(m.probe(0).result).toBe('SIGSEGV');
  });
});

describe('bad arguments', () => {
  test('access, byte and range are checked before anything is touched; an unmapped mapping is ClosedError', () => {
    const m = Mapping.anonymousShared(PAGE);
    expect(() => m.probe(0, 1, 'exec' as 'read')).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' }));
    expect(() => m.probe(0, 1, 1 as unknown as 'read')).toThrow(expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }));
    expect(() => m.probe(0, 1, 'write', 256)).toThrow(expect.objectContaining({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' }));
    expect(() => m.probe(0, 1, 'write', '1' as unknown as number)).toThrow(TypeError);
    expect(() => m.probe(PAGE - 1, 2)).toThrow(RangeError);
    expect(() => m.probe(-1, 1)).toThrow(RangeError);
    expect(() => raw.probeMemory(m.address, 1, 'write', -1)).toThrow(RangeError);
    m.unmap();
    expect(() => m.probe(0)).toThrow(ClosedError);
  });

  test('Mapping.unchecked has no views; MAP_FIXED and the page-poisoning advice are refused', () => {
    using m = Mapping.unchecked({ length: PAGE });
    expect(m.checked).toBe(false);
    expect(() => m.bytes()).toThrow(TypeError);
    expect(() => m.dataView(0, 8)).toThrow(TypeError);
    expect(() => Mapping.unchecked({ length: PAGE, flags: Mmap.MAP_SHARED | Mmap.MAP_ANONYMOUS | Mmap.MAP_FIXED })).toThrow(TypeError);
    expect(() => m.advise(0, PAGE, Mmap.MADV_HWPOISON)).toThrow(TypeError);
    expect(() => m.advise(0, PAGE, Mmap.MADV_SOFT_OFFLINE)).toThrow(TypeError);
    expect(() => Mapping.unchecked({ length: PAGE, fd: -2 })).toThrow(TypeError);
  });

  test('advise: MADV_DONTNEED drops a private page (it reads as zero), an unknown advice is the kernel EINVAL', () => {
    using m = Mapping.unchecked({ length: PAGE, flags: Mmap.MAP_PRIVATE | Mmap.MAP_ANONYMOUS });
    expect(m.probe(0, PAGE, 'write', 0x11).result).toBe('ok');
    expect(m.probe(0, 1).data).toEqual(new Uint8Array([0x11]));
    m.advise(0, PAGE, Mmap.MADV_DONTNEED);
    expect(m.probe(0, PAGE).data).toEqual(new Uint8Array(PAGE));
    expect(() => m.advise(0, PAGE, 999)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'madvise' }));
  });
});

// guest_memfd made with 'mmap' but not 'init-shared': its pages start
// private, the kernel maps it, and the first touch is SIGBUS (GM-10).
const mmapOnly = pickVmType("KVM_CAP_GUEST_MEMFD_FLAGS with 'mmap' on the VM fd", (t) => needs.all('', needs.guestMemfd(t), needs.gmemFlags('mmap', t)));

describe('guest_memfd mappings', () => {
  gate(mmapOnly.need).test("a guest_memfd made with 'mmap' without 'init-shared': every touch is SIGBUS, as a value (GM-10)", () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: mmapOnly.type ?? 'default' });
    const gmem = vm.createGuestMemfd({ size: 4 * PAGE, flags: ['mmap'] });
    // The checked mapping refuses it; the unchecked one maps it.
    expect(() => gmem.map()).toThrow();
    using m = Mapping.unchecked({ fd: gmem.fd, length: 4 * PAGE });
    expect(m.probe(0, 4 * PAGE, 'write', 0xaa)).toEqual({ result: 'SIGBUS', address: m.address, done: 0, data: null });
    expect(m.probe(0, 1, 'read')).toEqual({ result: 'SIGBUS', address: m.address, done: 0, data: new Uint8Array(0) });
  });
});

// MAP_FIXED only inside address space the package reserved: a fixed
// mapping replaces the PROT_NONE it lands on, and its unmap puts PROT_NONE
// back, so no other mapping of the process can be hit or take the hole.
describe('MAP_FIXED inside a reservation (Mapping.reserve / mapFixed)', () => {
  test('a reservation faults everywhere; a fixed mapping lands at the address asked; its unmap reserves the range again', () => {
    using r = Mapping.reserve(8 * PAGE);
    expect(r.probe(0, 8 * PAGE, 'read').result).toBe('SIGSEGV');
    const c = r.mapFixed({ at: 2 * PAGE, length: 2 * PAGE });
    expect(c.address).toBe(r.address + BigInt(2 * PAGE));
    expect(c.probe(0, 2 * PAGE, 'write', 0x5a).result).toBe('ok');
    // The reservation sees the child's pages where it placed them; not around them.
    expect(r.probe(2 * PAGE, 2 * PAGE).data).toEqual(new Uint8Array(2 * PAGE).fill(0x5a));
    expect(r.probe(PAGE, 1).result).toBe('SIGSEGV');
    expect(r.probe(4 * PAGE, 1).result).toBe('SIGSEGV');
    c.unmap();
    expect(c.unmapped).toBe(true);
    expect(r.probe(2 * PAGE, 1)).toMatchObject({ result: 'SIGSEGV', address: r.address + BigInt(2 * PAGE) });
    // The range is free for the next fixed mapping, which reads zero.
    using again = r.mapFixed({ at: 2 * PAGE, length: PAGE });
    expect(again.probe(0, 1).data).toEqual(new Uint8Array([0]));
  });

  test('a file at a 2 MiB-aligned address inside twice 2 MiB of reservation (GM-16 placement)', () => {
    const fd = fileOf(2 << 20);
    try {
      using r = Mapping.reserve(4 << 20);
      const at = ((r.address + 0x1fffffn) & ~0x1fffffn) - r.address;
      using m = r.mapFixed({ at, length: 2 << 20, fd });
      expect(m.address % (2n << 20n)).toBe(0n);
      expect(m.probe(0, 2 << 20, 'write', 1).result).toBe('ok');
      m.advise(0, 2 << 20, Mmap.MADV_DONTNEED);
      expect(m.probe(0, 1).data).toEqual(new Uint8Array([1]));
    } finally {
      closeSync(fd);
    }
  });

  test('refusals: not a reservation, unaligned, outside, overlapping a live child, the reservation while a child lives', () => {
    using plain = Mapping.anonymousShared(PAGE);
    expect(thrown(() => plain.mapFixed({ at: 0, length: PAGE }))).toMatchObject({ name: 'TypeError', code: 'ERR_INVALID_ARG_VALUE' });
    using r = Mapping.reserve(4 * PAGE);
    expect(thrown(() => r.mapFixed({ at: 1, length: PAGE }))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    expect(thrown(() => r.mapFixed({ at: 0, length: PAGE + 1 }))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    expect(thrown(() => r.mapFixed({ at: 3 * PAGE, length: 2 * PAGE }))).toMatchObject({ name: 'RangeError', code: 'ERR_OUT_OF_RANGE' });
    expect(thrown(() => r.mapFixed({ at: 0, length: PAGE, fd: -2 }))).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
    const c = r.mapFixed({ at: PAGE, length: 2 * PAGE });
    expect(thrown(() => r.mapFixed({ at: 2 * PAGE, length: PAGE }))).toMatchObject({ code: 'ERR_INVALID_ARG_VALUE' });
    const e = thrown(() => r.unmap());
    expect(e).toMatchObject({ code: 'ERR_KVM_MAPPING_IN_USE', address: r.address, memslots: [`the fixed mapping at 0x${c.address.toString(16)}`] });
    expect(r.unmapped).toBe(false);
    c.unmap();
    r.unmap();
    expect(thrown(() => r.mapFixed({ at: 0, length: PAGE }))).toBeInstanceOf(ClosedError);
  });

  test("the kernel's refusal (a read-only file mapped shared and writable: EACCES) leaves the range reserved and free", () => {
    using r = Mapping.reserve(2 * PAGE);
    const path = join(dir, 'read-only');
    closeSync(openSync(path, 'w'));
    const ro = openSync(path, constants.O_RDONLY);
    try {
      expect(thrown(() => r.mapFixed({ at: 0, length: PAGE, fd: ro }))).toMatchObject({ name: 'KvmError', code: 'EACCES' });
    } finally {
      closeSync(ro);
    }
    expect(r.probe(0, 1).result).toBe('SIGSEGV');
    using c = r.mapFixed({ at: 0, length: PAGE });
    expect(c.probe(0, 1).result).toBe('ok');
  });
});

// NUMA policy calls and memfd_create: thin syscalls whose answers are the
// kernel's. On one node the policies still read back as set (GM-12's
// single-node part); a bad mode is EINVAL.
const numa = gate(needs.env('numa'));

describe('memory policy and memfd calls', () => {
  numa.test('mbind and get_mempolicy(MPOL_F_ADDR): INTERLEAVE and BIND on node 0 read back, DEFAULT clears, mode 999 is EINVAL (GM-12)', () => {
    using m = Mapping.anonymousShared(4 * PAGE);
    m.mbind(0, 2 * PAGE, Mempolicy.MPOL_INTERLEAVE, [0]);
    expect(m.getMempolicy(0)).toEqual({ mode: Mempolicy.MPOL_INTERLEAVE, nodes: [0] });
    m.mbind(2 * PAGE, 2 * PAGE, Mempolicy.MPOL_BIND, [0]);
    expect(m.getMempolicy(2 * PAGE)).toEqual({ mode: Mempolicy.MPOL_BIND, nodes: [0] });
    m.mbind(0, 4 * PAGE, Mempolicy.MPOL_DEFAULT, []);
    expect(m.getMempolicy(0)).toEqual({ mode: Mempolicy.MPOL_DEFAULT, nodes: [] });
    const e = thrown(() => m.mbind(0, PAGE, 999, [0]));
    expect(e).toBeInstanceOf(KvmError);
    expect((e as KvmError).code).toBe('EINVAL');
  });

  numa.test('move_pages, asking only: node 0 for a touched page, -ENOENT for one never touched', () => {
    using m = Mapping.anonymousShared(2 * PAGE);
    m.bytes(0, 1)[0] = 1;
    expect(m.movePages(0, 2)).toEqual([0, -errno.ENOENT]);
  });

  numa.test("the thread's policy: set_mempolicy(BIND, [0]) reads back, then DEFAULT again", () => {
    raw.setMempolicy(Mempolicy.MPOL_BIND, [0]);
    try {
      expect(raw.getMempolicy()).toEqual({ mode: Mempolicy.MPOL_BIND, nodes: [0] });
    } finally {
      raw.setMempolicy(Mempolicy.MPOL_DEFAULT, []);
    }
    expect(raw.getMempolicy().mode).toBe(Mempolicy.MPOL_DEFAULT);
  });

  test('bad node lists and ranges are TypeError / RangeError before any syscall', () => {
    using m = Mapping.anonymousShared(PAGE);
    expect(() => m.mbind(0, PAGE, Mempolicy.MPOL_BIND, 'x' as unknown as number[])).toThrow(
      expect.objectContaining({ name: 'TypeError', code: 'ERR_INVALID_ARG_TYPE' }),
    );
    expect(() => m.mbind(0, PAGE, Mempolicy.MPOL_BIND, [1.5])).toThrow(RangeError);
    expect(() => m.mbind(0, PAGE, Mempolicy.MPOL_BIND, [4096])).toThrow(RangeError);
    expect(() => m.mbind(0, 2 * PAGE, Mempolicy.MPOL_BIND, [0])).toThrow(RangeError);
    expect(() => m.movePages(0, 2)).toThrow(RangeError);
    expect(() => raw.setMempolicy(Mempolicy.MPOL_BIND, null as unknown as number[])).toThrow(TypeError);
  });

  test('memfd_create: a close-on-exec fd of a plain file that maps and faults like one', () => {
    using f = raw.memfdCreate('kvm-gmem-test', Memfd.MFD_ALLOW_SEALING);
    expect(raw.isCloexec(f)).toBe(true);
    ftruncateSync(f.fd, PAGE);
    expect(raw.fstat(f).size).toBe(PAGE);
    using m = Mapping.unchecked({ fd: f.fd, length: 2 * PAGE });
    expect(m.probe(0, 2 * PAGE, 'write', 7)).toMatchObject({ result: 'SIGBUS', done: PAGE });
    expect(() => raw.memfdCreate('a\0b')).toThrow(TypeError);
    expect(() => raw.memfdCreate('x', 0x1000_0000)).toThrow(expect.objectContaining({ code: 'EINVAL', syscall: 'memfd_create' }));
  });
});

// read/write/pread/pwrite/ftruncate on any fd: a plain memfd takes them; a
// pipe with nothing in it answers EAGAIN instead of blocking; guest_memfd
// refuses all five (GM-4; the test-VM kernels with KVM_CAP_GUEST_MEMFD).
const anyGmem = pickVmType('a VM type with KVM_CAP_GUEST_MEMFD', (t) => needs.cap('GUEST_MEMFD', t));

describe('file I/O on any fd', () => {
  test('a memfd: write, pwrite, pread and read see the same bytes; ftruncate sets the size', () => {
    using f = raw.memfdCreate('kvm-gmem-io');
    raw.ftruncate(f, 2 * PAGE);
    expect(raw.fstat(f).size).toBe(2 * PAGE);
    expect(raw.write(f, new Uint8Array([1, 2, 3]))).toBe(3);
    expect(raw.pwrite(f, new Uint8Array([9, 8]), PAGE)).toBe(2);
    const b = new Uint8Array(3);
    expect(raw.pread(f, b, 0)).toBe(3);
    expect([...b]).toEqual([1, 2, 3]);
    expect(raw.pread(f, b, PAGE)).toBe(3);
    expect([...b]).toEqual([9, 8, 0]);
    expect(raw.read(f, b)).toBe(3); // the position is 3, after the write
    expect([...b]).toEqual([0, 0, 0]);
    expect(raw.pread(f, new Uint8Array(0), 0)).toBe(0);
  });

  test('a pipe never blocks the thread: an empty read is EAGAIN; pread is ESPIPE; bad arguments are TypeErrors', () => {
    const [r, w] = pipe();
    try {
      expect(thrown(() => raw.read(r, new Uint8Array(8)))).toMatchObject({ code: 'EAGAIN', syscall: 'read' });
      expect(raw.write(w, new Uint8Array([5]))).toBe(1);
      const b = new Uint8Array(8);
      expect(raw.read(r, b)).toBe(1);
      expect(thrown(() => raw.pread(r, b, 0))).toMatchObject({ code: 'ESPIPE' });
      expect(thrown(() => raw.read(-5, b))).toBeInstanceOf(TypeError);
      expect(thrown(() => raw.read(r, [1, 2] as unknown as Uint8Array))).toBeInstanceOf(TypeError);
      expect(thrown(() => raw.pread(r, b, -1))).toBeInstanceOf(TypeError);
      expect(thrown(() => raw.ftruncate(r, 2n ** 63n))).toBeInstanceOf(TypeError);
    } finally {
      closeSync(r);
      closeSync(w);
    }
  });

  gate(anyGmem.need).test('guest_memfd refuses read, write, pread, pwrite and ftruncate (GM-4)', () => {
    using kvm = Kvm.open();
    using vm = kvm.createVm({ type: anyGmem.type ?? 'default' });
    using gmem = vm.createGuestMemfd({ size: 4 * PAGE });
    const b = new Uint8Array(64);
    for (const f of [
      () => raw.read(gmem, b),
      () => raw.write(gmem, b),
      () => raw.pread(gmem, b, 0),
      () => raw.pwrite(gmem, b, 0),
      () => raw.ftruncate(gmem, 8 * PAGE),
    ]) {
      expect(thrown(f)).toBeInstanceOf(KvmError);
    }
    expect(gmem.stat().size).toBe(4 * PAGE);
  });
});

/** A FIFO opened read-write (Linux opens it without waiting for a peer): both ends of a pipe in one fd. */
function pipe(): [number, number] {
  const path = join(dir, `fifo-${Math.random()}`);
  execFileSync('mkfifo', [path]);
  const fd = openSync(path, constants.O_RDWR);
  return [fd, openSync(path, constants.O_WRONLY)];
}

// A memory mapping owned by exactly one object. Views are plain typed arrays
// over an ArrayBuffer that the native layer detaches on unmap, so a view
// kept past unmap() has byteLength 0 and cannot reach unmapped memory.
import { ClosedError } from './errors.js';
import { native } from './native.js';
import { Mmap } from './uapi.js';

export class Mapping implements Disposable {
  #buffer: ArrayBuffer | null;
  readonly address: bigint;
  readonly length: number;

  private constructor(buffer: ArrayBuffer, address: bigint) {
    this.#buffer = buffer;
    this.address = address;
    this.length = buffer.byteLength;
  }

  /** MAP_SHARED|MAP_ANONYMOUS read-write memory (shmem, so MADV_REMOVE frees it). */
  static anonymousShared(length: number): Mapping {
    const m = native.mmap(-1, length, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED | Mmap.MAP_ANONYMOUS | Mmap.MAP_NORESERVE, 0);
    return new Mapping(m.buffer, m.address);
  }

  /** MAP_SHARED read-write mapping of `fd` at `offset`. */
  static sharedFile(fd: number, length: number, offset = 0): Mapping {
    const m = native.mmap(fd, length, Mmap.PROT_READ | Mmap.PROT_WRITE, Mmap.MAP_SHARED, offset);
    return new Mapping(m.buffer, m.address);
  }

  get unmapped(): boolean {
    return this.#buffer === null;
  }

  private buffer(op: string): ArrayBuffer {
    if (this.#buffer === null) throw new ClosedError('Mapping', op);
    return this.#buffer;
  }

  /** A byte view of [offset, offset + length) of the mapping. */
  bytes(offset = 0, length = this.length - offset): Uint8Array {
    if (offset < 0 || length < 0 || offset + length > this.length) throw new RangeError(`view [${offset}, ${offset + length}) is outside the mapping (length ${this.length})`);
    return new Uint8Array(this.buffer('create a view'), offset, length);
  }

  /** A DataView of [offset, offset + length). */
  dataView(offset = 0, length = this.length - offset): DataView {
    if (offset < 0 || length < 0 || offset + length > this.length) throw new RangeError(`view [${offset}, ${offset + length}) is outside the mapping (length ${this.length})`);
    return new DataView(this.buffer('create a view'), offset, length);
  }

  /** madvise(MADV_REMOVE): frees the backing pages; they read as zero next. */
  discard(offset: number, length: number): void {
    native.madvise(this.buffer('discard pages'), offset, length, Mmap.MADV_REMOVE);
  }

  /** Unmaps; every view detaches (byteLength 0). Idempotent. */
  unmap(): void {
    const b = this.#buffer;
    if (b === null) return;
    this.#buffer = null;
    native.munmap(b);
  }

  [Symbol.dispose](): void {
    this.unmap();
  }
}

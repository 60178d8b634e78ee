// Base class for every object that owns a file descriptor: exactly one owner
// per fd, close() idempotent and drops the fd before closing it, use after
// close throws ClosedError, and a finalizer closes what was never closed
// (a safety net only: tests check that nothing relies on it).
import { ClosedError } from '../errors.js';
import { native } from './native.js';

const finalizer = new FinalizationRegistry<number>((fd) => {
  try {
    native.close(fd);
  } catch {
    // Nothing to report to: the owner is gone.
  }
});

export abstract class FdResource implements Disposable {
  #fd: number;

  protected constructor(
    fd: number,
    private readonly kind: string,
  ) {
    this.#fd = fd;
    finalizer.register(this, fd, this);
  }

  /**
   * @internal The fd of `r` read from its private field, not through a
   * getter a caller could have replaced; ClosedError after close.
   */
  static fdOf(r: FdResource, operation: string): number {
    if (r.#fd < 0) throw new ClosedError(r.kind, operation);
    return r.#fd;
  }

  /** True once close() ran. */
  get closed(): boolean {
    return this.#fd < 0;
  }

  /** The fd, for passing to other APIs; throws after close. */
  get fd(): number {
    return this.use('read its fd');
  }

  /** Returns the fd or throws ClosedError naming the operation. */
  protected use(operation: string): number {
    if (this.#fd < 0) throw new ClosedError(this.kind, operation);
    return this.#fd;
  }

  /** Releases what this object owns besides its fd (children, mappings). */
  protected beforeClose(): void {}

  close(): void {
    const fd = this.#fd;
    if (fd < 0) return;
    this.beforeClose();
    this.#fd = -1;
    finalizer.unregister(this);
    native.close(fd);
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

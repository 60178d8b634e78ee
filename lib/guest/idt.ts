// Exception handling of the 64-bit guests, as the selftests' IDT and
// `ucall UNHANDLED`: every one of the 32 architectural vectors has a stub
// that reports the vector, error code, rip and CR2 to the host over the
// ucall port, so an unexpected #PF or #UD becomes a typed error that says
// where, instead of a triple fault and a SHUTDOWN exit. A program may put
// its own handler (a label, ending in iretq) on any vector.
import { type Assembler, mem } from '../x86/asm.js';
import { Selector } from './layout.js';
import { Ucall, UCALL_PORT } from './ucall.js';

export const EXCEPTION_VECTORS = 32;

/** Vectors whose exception pushes an error code. */
const WITH_ERROR_CODE = new Set([8, 10, 11, 12, 13, 14, 17, 21, 29, 30]);

export const EXCEPTION_NAMES: readonly string[] = [
  '#DE', '#DB', 'NMI', '#BP', '#OF', '#BR', '#UD', '#NM', '#DF', 'CSO', '#TS', '#NP', '#SS', '#GP', '#PF', 'reserved-15',
  '#MF', '#AC', '#MC', '#XM', '#VE', '#CP', 'reserved-22', 'reserved-23', 'reserved-24', 'reserved-25', 'reserved-26',
  'reserved-27', '#HV', '#VC', '#SX', 'reserved-31',
]; // prettier-ignore

export function stubLabel(vector: number): string {
  return `__exception_stub_${vector}`;
}

/**
 * Emits the 32 stubs and their common tail. The tail never returns: the host
 * fails the run on the UNHANDLED ucall; a host that re-enters anyway finds
 * the guest halted.
 */
export function emitExceptionStubs(a: Assembler): void {
  for (let v = 0; v < EXCEPTION_VECTORS; v++) {
    a.label(stubLabel(v));
    if (!WITH_ERROR_CODE.has(v)) a.push(0);
    a.push(v);
    a.jmp('__exception_common');
  }
  // Stack: vector, error code, then the CPU's frame: rip, cs, rflags, rsp, ss.
  a.label('__exception_common');
  a.mov('rsi', mem(64, 'rsp', 0));
  a.mov('rcx', mem(64, 'rsp', 8));
  a.mov('rdi', mem(64, 'rsp', 16));
  a.mov('r8', 'cr2');
  a.mov('eax', Ucall.UNHANDLED);
  a.mov('dx', UCALL_PORT);
  a.out('dx', 'eax');
  a.label('__exception_halt');
  a.hlt();
  a.jmp('__exception_halt');
}

/**
 * Writes the 64-bit interrupt gates (present, DPL 0, the 64-bit code
 * selector) for the 32 vectors into `idt`: `handlers[v]` where the program
 * gave one, else the stub.
 */
export function writeIdt(idt: DataView, labels: ReadonlyMap<string, bigint>, handlers: ReadonlyMap<number, string>): void {
  for (let v = 0; v < EXCEPTION_VECTORS; v++) {
    const name = handlers.get(v) ?? stubLabel(v);
    const off = labels.get(name);
    if (off === undefined) throw new RangeError(`exception handler for vector ${v}: no label '${name}' in the guest program`);
    const at = v * 16;
    idt.setUint16(at, Number(off & 0xffffn), true);
    idt.setUint16(at + 2, Selector.CODE64, true);
    idt.setUint8(at + 4, 0); // IST 0: the current stack
    idt.setUint8(at + 5, 0x8e); // present, DPL 0, 64-bit interrupt gate
    idt.setUint16(at + 6, Number((off >> 16n) & 0xffffn), true);
    idt.setUint32(at + 8, Number((off >> 32n) & 0xffffffffn), true);
    idt.setUint32(at + 12, 0, true);
  }
}

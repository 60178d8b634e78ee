// Guest-to-host messages over one I/O port, like the KVM selftests' ucall:
// the guest puts the command in EAX, its argument in ESI/RSI (and a second
// one in ECX/RCX) and executes `out dx, eax` with DX = UCALL_PORT. The host
// sees an IO exit on that port and reads the arguments from the registers.
import type { Assembler, Cond, Reg } from './asm.js';

export const UCALL_PORT = 0x1000;

export const Ucall = { SYNC: 1, ASSERT: 2, DONE: 3, PRINT: 4 } as const;
export type UcallName = keyof typeof Ucall;

function regs(a: Assembler): { arg: Reg; arg2: Reg } {
  return a.bits === 64 ? { arg: 'rsi', arg2: 'rcx' } : { arg: 'esi', arg2: 'ecx' };
}

/**
 * Emits one ucall. `arg`/`arg2` are immediates or registers. The registers
 * it uses are saved and restored, so guest code can print a value and go on
 * computing with it.
 */
export function emitUcall(a: Assembler, cmd: number, arg: number | bigint | Reg = 0, arg2: number | bigint | Reg = 0): Assembler {
  const r = regs(a);
  const saved: Reg[] = a.bits === 64 ? ['rax', 'rcx', 'rdx', 'rsi'] : a.bits === 32 ? ['eax', 'ecx', 'edx', 'esi'] : ['ax', 'cx', 'dx', 'si'];
  for (const s of saved) a.push(s);
  // Both arguments are read before either register is written, via the stack.
  a.push(typeof arg === 'string' ? arg : (arg as never));
  a.push(typeof arg2 === 'string' ? arg2 : (arg2 as never));
  a.pop(r.arg2).pop(r.arg);
  a.mov('eax', cmd);
  a.mov('dx', UCALL_PORT);
  a.out('dx', 'eax');
  for (const s of saved.reverse()) a.pop(s);
  return a;
}

/** Guest-side helpers bound to one assembler. */
export class GuestIo {
  #n = 0;
  constructor(readonly a: Assembler) {}

  /** Reports reaching step `n`; the host's onSync runs before the guest continues. */
  sync(n: number): this {
    emitUcall(this.a, Ucall.SYNC, n);
    return this;
  }

  /** Sends a value (an immediate or a register) to the host's print log. */
  print(value: number | bigint | Reg): this {
    emitUcall(this.a, Ucall.PRINT, value);
    return this;
  }

  /**
   * Fails the run with `code` unless condition `cond` holds for the flags of
   * the previous instruction (e.g. after `cmp rax, 42`, cond 'e').
   */
  assert(cond: Cond, code: number): this {
    const ok = `__assert_ok_${this.#n++}`;
    this.a.jcc(cond, ok);
    emitUcall(this.a, Ucall.ASSERT, code);
    this.a.label(ok);
    return this;
  }

  /** Ends the run successfully. */
  done(): this {
    emitUcall(this.a, Ucall.DONE);
    // A guest that ignores the host and continues would run into garbage.
    this.a.hlt();
    return this;
  }
}

// Guest-to-host messages over one I/O port, like the KVM selftests' ucall:
// the guest puts the command in EAX, its argument in ESI/RSI (and a second
// one in ECX/RCX) and executes `out dx, eax` with DX = UCALL_PORT. The host
// sees an IO exit on that port and reads the arguments from the registers.
import { AsmError, type Assembler, type Cond, type Reg } from '../x86/asm.js';
import { regBySize, regInfo } from '../x86/asm-operands.js';

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
  // ESI/ECX carry the arguments in 16- and 32-bit code, so the 32-bit
  // registers are the ones saved there (saving AX..SI in real mode lost the
  // upper halves, and popping ESI after pushing 16-bit words misaligned the stack).
  const saved: Reg[] = a.bits === 64 ? ['rax', 'rcx', 'rdx', 'rsi'] : ['eax', 'ecx', 'edx', 'esi'];
  for (const s of saved) a.push(s);
  if (a.bits === 64) {
    for (const v of [arg, arg2]) {
      // push/pop of a 16-bit register would misalign the 64-bit stack.
      if (typeof v === 'string' && regInfo(v)?.size !== 64) throw new AsmError(`ucall argument ${v}: use a 64-bit register in 64-bit code`);
    }
    // Both arguments are read before either register is written, via the stack.
    a.push(typeof arg === 'string' ? arg : (arg as never));
    a.push(typeof arg2 === 'string' ? arg2 : (arg2 as never));
    a.pop(r.arg2).pop(r.arg);
  } else {
    loadArgs32(a, [
      [r.arg, arg],
      [r.arg2, arg2],
    ]);
  }
  a.mov('eax', cmd);
  a.mov('dx', UCALL_PORT);
  a.out('dx', 'eax');
  for (const s of saved.reverse()) a.pop(s);
  return a;
}

// 16/32-bit code: register arguments go through the stack as 32-bit words
// (all read before any argument register is written, a 16-bit one is then
// zero-extended); immediates are moved in afterwards, since a push of an
// immediate is only 16 bits wide in 16-bit code.
function loadArgs32(a: Assembler, args: [Reg, number | bigint | Reg][]): void {
  const fromRegs = args.filter((x): x is [Reg, Reg] => typeof x[1] === 'string');
  for (const [, src] of fromRegs) {
    const info = regInfo(src);
    if (info === undefined || info.size === 8 || info.size === 64)
      throw new AsmError(`ucall argument ${String(src)}: use a 16- or 32-bit register in ${a.bits}-bit code`);
    a.push(regBySize(32, info.num).name);
  }
  for (const [dst] of [...fromRegs].reverse()) a.pop(dst);
  for (const [dst, src] of fromRegs) if (regInfo(src)?.size === 16) a.and(dst, 0xffff);
  for (const [dst, v] of args) if (typeof v !== 'string') a.mov(dst, v);
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

// Where the guest builders put things in guest physical memory. Page tables
// identity-map the first 4 GiB with 2 MiB pages, so MMIO to an address with
// no memslot (e.g. 0xd0000000) reaches the host as an MMIO exit.
export const Layout = {
  PML4: 0x1000,
  PDPT: 0x2000,
  /** Four page directories: 4 GiB of 2 MiB pages. */
  PD: 0x3000,
  GDT: 0x7000,
  TSS: 0x7800,
  STACK_TOP: 0xf000,
  /** The IDT of 64-bit guests: 32 gates to the exception stubs. */
  IDT: 0xf000,
  /** Default entry point of 64-bit guests. */
  CODE: 0x10000,
  /** Default entry point of real-mode guests. */
  REAL_MODE_CODE: 0x1000,
  /** Smallest guest memory a 64-bit guest fits in. */
  MIN_MEMORY: 0x20000,
} as const;

export const Selector = { CODE64: 0x08, DATA: 0x10, TSS: 0x18 } as const;

/* The engine boundary of emsan's C code: everything it knows about Unicorn is here.
 *
 * The C code does not link against libunicorn: machine/native.py hands over the few entry
 * points it calls (emsan_set_api, engine.c), taken from the very copy the binding loaded. The
 * constants and the TLB entry layout below are those of the pinned Unicorn (2.1.3, include/
 * unicorn/unicorn.h); nothing else in native/ may spell a Unicorn number. */
#ifndef EMSAN_ENGINE_H
#define EMSAN_ENGINE_H
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include "emsan_native.h"

/* uc_mem_type: the access a memory or fault callback reports. */
#define ENGINE_MEM_READ 16
#define ENGINE_MEM_WRITE 17
#define ENGINE_MEM_WRITE_PROT 22
#define ENGINE_MEM_READ_PROT 23

/* uc_hook_type: UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE */
#define ENGINE_HOOK_MEM_READ (1 << 10)
#define ENGINE_HOOK_MEM_WRITE (1 << 11)

/* uc_prot bits, as a TLB entry's permissions. */
#define ENGINE_PROT_READ 1
#define ENGINE_PROT_RW 3
#define ENGINE_PROT_ALL 7

/* uc_tlb_entry: what a UC_HOOK_TLB_FILL callback fills in for a virtual page. */
typedef struct engine_tlb_entry {
    uint64_t paddr;
    int perms;
} engine_tlb_entry;

/* uc_ctl(uc, UC_CTL_WRITE(UC_CTL_TLB_FLUSH, 0)): forget every virtual-TLB mapping. */
#define ENGINE_CTL_TLB_FLUSH (11 | (1 << 30))
/* uc_ctl_remove_cache(uc, begin, end): UC_CTL_WRITE(UC_CTL_TB_REMOVE_CACHE, 2) */
#define ENGINE_CTL_TB_REMOVE_CACHE (9 | (2 << 26) | (1 << 30))

extern emsan_api emsan_uc;

/* QEMU internals of the pinned libunicorn (qemu_get_cpu_<arch>, cpu_restore_state_<arch>,
 * found by machine/engine.py) that map a host address in translated code to a guest PC. */
typedef struct engine_pc_recovery { void *get_cpu, *restore; } engine_pc_recovery;
/* From inside a memory callback: guest PCs at or near the instruction making the access (at
 * most max, 0 without the internals); pc_reg: the engine's id of the PC register. */
int engine_access_pcs(void *uc, const engine_pc_recovery *r, int pc_reg, uint64_t *out, int max);
/* The guest PC of host_pc, a return address into translated code a helper was given; 0 if none. */
int engine_pc_at(void *uc, const engine_pc_recovery *r, uintptr_t host_pc, int pc_reg, uint64_t *pc);

typedef int (*engine_reg_read_fn)(void *, int, void *);
typedef int (*engine_reg_write_fn)(void *, int, const void *);
typedef int (*engine_mem_read_fn)(void *, uint64_t, void *, size_t);
typedef int (*engine_mem_write_fn)(void *, uint64_t, const void *, size_t);
typedef int (*engine_emu_stop_fn)(void *);
typedef int (*engine_ctl_fn)(void *, int, ...);
typedef void *(*engine_host_ptr_fn)(void *, uint64_t, size_t, _Bool);
typedef void *(*engine_reg_ptr_fn)(void *, int, _Bool);
typedef int (*engine_hook_add_fn)(void *, size_t *, int, void *, void *, uint64_t, uint64_t, ...);
typedef int (*engine_block_filter_fn)(void *, size_t, void *, void *);
typedef int (*engine_tlb_flush_page_fn)(void *, uint64_t);
typedef int (*engine_hook_gate_fn)(void *, size_t, uint64_t *, int64_t, uint64_t, uint64_t);

/* uc_tb: the translation block a UC_HOOK_EDGE_GENERATED callback is given. */
typedef struct engine_tb { uint64_t pc; uint16_t icount; uint16_t size; } engine_tb;

/* Where the CPU state keeps a general-purpose register (engine/patches/013), found once per engine
 * and register: hooks then read and write it without uc_reg_read/uc_reg_write's dispatch, which
 * was 15% of generic mode's intercepted string calls. NULL: through the API (other registers,
 * writes of the PC, which must end the block). */
#define ENGINE_REG_IDS 512
struct engine_regs { void *uc; uint64_t *p[2][ENGINE_REG_IDS]; uint8_t known[2][ENGINE_REG_IDS]; };
extern struct engine_regs engine_regs;
uint64_t *engine_reg_lookup(void *uc, int id, int is_write);
/* A new runtime: an engine at the last one's address may be another engine. */
void engine_regs_forget(void);
static inline uint64_t *reg_ptr(void *uc, int id, int is_write)
{
    if (__builtin_expect(engine_regs.uc == uc && (unsigned)id < ENGINE_REG_IDS && engine_regs.known[is_write][id], 1))
        return engine_regs.p[is_write][id];
    return engine_reg_lookup(uc, id, is_write);
}

static inline uint64_t reg_get(void *uc, int id)
{
    const uint64_t *p = reg_ptr(uc, id, 0);
    if (p) return *p;
    uint64_t v = 0;
    ((engine_reg_read_fn)emsan_uc.uc_reg_read)(uc, id, &v);
    return v;
}
/* A register wider than 64 bits (a vector register: 16 bytes). */
static inline void reg_get_wide(void *uc, int id, void *out) { ((engine_reg_read_fn)emsan_uc.uc_reg_read)(uc, id, out); }
static inline void reg_set(void *uc, int id, uint64_t v)
{
    uint64_t *p = reg_ptr(uc, id, 1);
    if (p) *p = v;
    else ((engine_reg_write_fn)emsan_uc.uc_reg_write)(uc, id, &v);
}
/* Guest memory; nonzero when [a, a+n) is not all mapped. A range in one plain RAM region is
 * copied through its host address (engine/patches/005: one lookup where uc_mem_read translates
 * the address three times); anything else goes through uc_mem_read/uc_mem_write. */
static inline int mem_get(void *uc, uint64_t a, void *buf, size_t n)
{
    const void *h = ((engine_host_ptr_fn)emsan_uc.uc_emsan_host_ptr)(uc, a, n, 0);
    if (h) {
        memcpy(buf, h, n);
        return 0;
    }
    return ((engine_mem_read_fn)emsan_uc.uc_mem_read)(uc, a, buf, n);
}
/* [a, a+n) of guest memory to read in place: its host address when it lies in one plain RAM
 * region, else a copy in buf (n bytes); NULL when it is not all mapped. */
static inline const void *mem_view(void *uc, uint64_t a, void *buf, size_t n)
{
    const void *h = ((engine_host_ptr_fn)emsan_uc.uc_emsan_host_ptr)(uc, a, n, 0);
    if (h) return h;
    return ((engine_mem_read_fn)emsan_uc.uc_mem_read)(uc, a, buf, n) ? NULL : buf;
}
static inline int mem_put(void *uc, uint64_t a, const void *buf, size_t n)
{
    void *h = ((engine_host_ptr_fn)emsan_uc.uc_emsan_host_ptr)(uc, a, n, 1);
    if (h) {
        memcpy(h, buf, n);
        return 0;
    }
    return ((engine_mem_write_fn)emsan_uc.uc_mem_write)(uc, a, buf, n);
}
static inline void emu_stop(void *uc) { ((engine_emu_stop_fn)emsan_uc.uc_emu_stop)(uc); }
static inline void tlb_flush(void *uc) { ((engine_ctl_fn)emsan_uc.uc_ctl)(uc, ENGINE_CTL_TLB_FLUSH); }
/* The code hook hh is called only when (*word += add) - base < size (engine/patches/017): the
 * test runs in translated code, the way the kernel's static keys keep a hook off a fast path. */
static inline int hook_gate(void *uc, size_t hh, uint64_t *word, int64_t add, uint64_t base, uint64_t size)
{
    return ((engine_hook_gate_fn)emsan_uc.uc_emsan_hook_gate)(uc, hh, word, add, base, size);
}
/* Forget one virtual page's mapping, keep every other page's (engine/patches/016): what a change
 * of one page's protection needs, without refilling the whole working set afterwards. */
static inline void tlb_flush_page(void *uc, uint64_t a)
{
    ((engine_tlb_flush_page_fn)emsan_uc.uc_emsan_tlb_flush_page)(uc, a);
}

#endif

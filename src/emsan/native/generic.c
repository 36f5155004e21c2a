/* Generic KASAN: one shadow byte per 8 bytes (shadow.c) says how many bytes of the granule are
 * accessible, or why none is (redzone, freed, ...). Accesses to emsan's heap are checked by a
 * native memory hook (here) or, by default, through an MMIO view of the heap (mmio.c). */
#include "kasan.h"

/* The kernel's optimal_redzone(): bigger objects get bigger redzones. */
static uint32_t generic_redzone(uint32_t s)
{
    return s <= 64 - 16 ? 16 : s <= 128 - 32 ? 32 : s <= 512 - 64 ? 64 : s <= 4096 - 128 ? 128 :
           s <= (1 << 14) - 256 ? 256 : s <= (1 << 15) - 512 ? 512 : s <= (1 << 16) - 1024 ? 1024 : 2048;
}

static uint64_t generic_unpoison(kasan_t *k, uint64_t addr, uint64_t size, uint64_t poison_to, uint8_t rz)
{
    shadow_unpoison(k, addr, size, poison_to, rz);
    return addr;
}

/* Whether an object is live is the allocator's to say: a zero-sized one has no accessible byte. */
static int generic_accessible(kasan_t *k, const struct obj *o, uint64_t ptr)
{
    (void)k; (void)ptr;
    return o->state == EMSAN_OBJ_LIVE;
}

static int generic_range_bad(kasan_t *k, uint64_t addr, uint64_t size)
{
    return shadow_range_bad(k, addr, addr + size);
}

/* --checks hook: called by Unicorn for every load and store. Unbounded on purpose: unicorn
 * 2.1.3 syncs the PC before a memory hook only when the hook covers every address
 * (tests/test_machine.py); the range test here costs the same. */
static void generic_access_cb(void *uc, int type, uint64_t addr, int size, int64_t value, void *ud)
{
    (void)value;
    kasan_t *k = ud;
    if (addr - k->base >= k->size)
        return;                           /* objects live in the heap only (unsigned: below it too) */
    if (LIKELY(!shadow_access_bad(k, addr, (uint64_t)size)))
        return;
    rt_t *rt = k->rt;
    int is_write = type == ENGINE_MEM_WRITE;
    uint64_t pc = reg_get(uc, rt->regs[EMSAN_REG_PC]);
    if (!is_write && size >= 8 && read_ahead(k, pc, addr, (uint64_t)size))
        return;
    if (call_quiet(k, addr, (uint64_t)size, is_write)) return;     /* a libc call's own (libc.c) */
    report_error(rt, EMSAN_ERR_ACCESS, addr, (uint64_t)size, is_write, pc, stack_here(rt, pc, 0), 0, 0);
}

static uint8_t generic_state_at(kasan_t *k, uint64_t addr) { return (uint8_t)shadow_at(k, addr); }

const struct kasan_ops kasan_generic_ops = {
    .granule = GRANULE,
    .quarantine = 1,
    .redzone = generic_redzone,
    .poison = shadow_fill,
    .unpoison = generic_unpoison,
    .accessible = generic_accessible,
    .range_bad = generic_range_bad,
    .access_cb = generic_access_cb,
    .state_at = generic_state_at,
    .set_state = shadow_fill,
};

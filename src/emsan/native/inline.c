/* Access checks in translated code (--checks inline, the default where the engine has them:
 * x86-64 hosts). The heap is plain memory to the engine; engine/patches/011 makes translated
 * code look up, at every access inside the heap, a byte per granule in a flat copy of the
 * heap's shadow kept here, and call emsan_inline_cb only when that byte is not "clean": the
 * exact check (partial granules), the report and the exact PC are then emsan's. Accesses the
 * engine's helpers make (atomics, page-crossing, TLB misses) are checked the same way there.
 *
 * The copy holds shadow ^ KASAN_SLAB_REDZONE: the copy of an 8 GiB heap is 1 GiB, lazily
 * backed, and its untouched (zero) bytes then read as redzone, which is what the heap's
 * never-used chunks are (shadow.c, default_page). */
#include <sys/mman.h>
#include "kasan.h"

#define FLAT_CLEAN KASAN_SLAB_REDZONE

struct inline_state {
    uint8_t *flat;
    size_t bytes;
    engine_pc_recovery pcr;
};

typedef int (*shadow_check_fn)(void *uc, uint64_t base, uint64_t size, const uint8_t *shadow, uint8_t clean,
                               void *cb, void *ud);

void inline_destroy(kasan_t *k)
{
    if (!k->il) return;
    munmap(k->il->flat, k->il->bytes);
    free(k->il);
    k->il = NULL;
}

EXPORT int emsan_inline_init(emsan_kasan *k, void *get_cpu, void *restore)
{
    if (!emsan_uc.uc_emsan_shadow_check || k->il) return 0;
    struct inline_state *s = calloc(1, sizeof *s);
    if (!s) return 0;
    s->bytes = (k->size >> 3) + PAGE_SIZE;           /* the last granule's neighbour is read too */
    s->flat = mmap(NULL, s->bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s->flat == MAP_FAILED) { free(s); return 0; }
    s->pcr.get_cpu = get_cpu;
    s->pcr.restore = restore;
    k->il = s;
    if (((shadow_check_fn)emsan_uc.uc_emsan_shadow_check)(k->rt->uc, k->base, k->size, s->flat, FLAT_CLEAN,
                                                         (void *)emsan_inline_cb, k) != 0) {
        inline_destroy(k);               /* not this host: the caller checks another way */
        return 0;
    }
    return 1;
}

/* The shadow of [addr, addr+len) (granule aligned) became `value`: so does the copy's. */
void inline_fill(kasan_t *k, uint64_t addr, uint64_t len, uint8_t value)
{
    uint64_t end = addr + len, hi = k->base + k->size;
    if (addr < k->base) addr = k->base;
    if (end > hi) end = hi;
    if (addr < end) memset(k->il->flat + ((addr - k->base) >> 3), value ^ FLAT_CLEAN, (end - addr) >> 3);
}

EXPORT void emsan_inline_cb(void *uc, uint64_t addr, int size, _Bool is_write, uintptr_t host_pc, void *ud)
{
    kasan_t *k = ud;
    if (LIKELY(!shadow_access_bad(k, addr, (uint64_t)size))) return;   /* a partial granule's good bytes */
    uint64_t pc;
    int exact = host_pc && engine_pc_at(uc, &k->il->pcr, host_pc, k->rt->regs[EMSAN_REG_PC], &pc);
    access_error(k, addr, (unsigned)size, is_write, exact ? &pc : NULL, exact);
}
